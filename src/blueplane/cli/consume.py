"""``blueplane consume``: the fast-path consumer alone, for a team's central host."""

from __future__ import annotations

import asyncio
import logging

import typer

from blueplane.cli.common import ConfigOpt, app, settings_or_exit, setup_logging


@app.command()
def consume(config: ConfigOpt = None) -> None:
    """Consume the shared stream into the store (store.url) until Ctrl-C or SIGTERM.

    Run several, with distinct fast_path.consumer names (BLUEPLANE_FAST_PATH__CONSUMER), to
    share the load; entries a dead one left pending are claimed by the others.
    """
    settings = settings_or_exit(config)
    setup_logging(settings.log_level)
    from blueplane.broker import RedisTooOld
    from blueplane.consume import consume as run_consume
    from blueplane.store_schema import StoreSchemaTooNew
    from blueplane.stores import StoreAuthError

    try:
        asyncio.run(run_consume(settings))
    except (RedisTooOld, StoreSchemaTooNew, StoreAuthError) as exc:
        logging.getLogger("blueplane.consume").error("%s", exc)
        raise typer.Exit(1) from exc
