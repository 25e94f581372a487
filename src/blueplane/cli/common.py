"""The ``blueplane`` app, its shared options (``--config``, ``--json``) and its consoles."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from blueplane.config import ConfigError, Settings, load_settings
from blueplane.store import TraceStore
from blueplane.urls import mask_url

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Blueplane Monitor: local telemetry for Cursor's AI, read from its own databases.",
)

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config file (default: $BLUEPLANE_CONFIG).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_state: dict[str, Path | None] = {"config": None}


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    _state["config"] = config


def settings_or_exit(config: Path | None = None) -> Settings:
    """The settings (``--config`` of the command, else of the app); an unusable config is one
    line naming the file and key, and exit code 2."""
    try:
        return load_settings(config or _state["config"])
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def open_store_or_exit(settings: Settings) -> TraceStore:
    """The store of ``store.url``, read-only, for a query command; one line and exit 1 when
    it cannot be opened (unreachable, credentials refused, written by a newer Blueplane)."""
    from blueplane.stores import open_errors, open_store

    try:
        return open_store(settings.store_url, readonly=True)
    except open_errors() as exc:
        err.print(f"[red]error:[/red] {store_error_text(settings, exc)}", highlight=False)
        raise typer.Exit(1) from exc


def store_error_text(settings: Settings, exc: BaseException) -> str:
    """One line for a store that cannot be opened: the store named, never a password."""
    from blueplane.store_schema import StoreSchemaTooNew
    from blueplane.stores import StoreAuthError

    if isinstance(exc, StoreSchemaTooNew | StoreAuthError):
        return str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = lines[0] if lines else type(exc).__name__
    return f"cannot open the store {mask_url(settings.store_url)}: {cause}"


def setup_logging(level: str) -> None:
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
