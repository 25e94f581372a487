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
