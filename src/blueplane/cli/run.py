"""``blueplane run``: the server in the foreground."""

from __future__ import annotations

import asyncio
import logging

import typer

from blueplane.cli.common import ConfigOpt, app, settings_or_exit, setup_logging


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    settings = settings_or_exit(config)
    setup_logging(settings.log_level)
    from blueplane.malloc_arenas import limit_arenas

    limit_arenas()  # before any thread starts
    from blueplane.broker import RedisTooOld
    from blueplane.instance_lock import InstanceLocked
    from blueplane.server import serve
    from blueplane.store_schema import StoreSchemaTooNew
    from blueplane.stores import StoreAuthError

    try:
        asyncio.run(serve(settings))
    except (InstanceLocked, RedisTooOld, StoreSchemaTooNew, StoreAuthError) as exc:
        logging.getLogger("blueplane.server").error("%s", exc)
        raise typer.Exit(1) from exc
