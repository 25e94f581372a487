"""The ``blueplane`` command: run the server, and look at what it captured.

Tables are for people; ``--json`` output is for scripts and its shape is documented in the
README (keys are only ever added, never renamed or removed). One module per command group:
``common`` (the app, its shared options and consoles), ``run``, ``status`` (with
``stream_stats``), ``workspaces``, ``traces``, ``session`` and ``dlq``; ``formatting`` holds
the helpers they share.
"""

from __future__ import annotations

from blueplane.cli import (  # noqa: F401 (commands)
    compare,
    consume,
    conversations,
    dlq,
    export,
    hooks,
    run,
    session,
    status,
    traces,
    ui,
    workspaces,
)
from blueplane.cli.common import app
from blueplane.cli.traces import parse_since

__all__ = ["app", "parse_since"]
