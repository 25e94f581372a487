"""``blueplane traces``: captured traces from the local store."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from blueplane.cli.common import JsonOpt, app, open_store_or_exit, out, settings_or_exit
from blueplane.cli.formatting import trace_cells
from blueplane.config import Settings
from blueplane.events import normalise_workspace_path, parse_iso_ms, workspace_hash
from blueplane.export import TraceFilter, newest_trace_rows, with_sources, write_json_array
from blueplane.store_schema import SQLITE
from blueplane.stores import store_exists

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> int:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 date/time; milliseconds since the epoch."""
    m = _RELATIVE.match(text)
    if m:
        return int(((now or time.time()) - float(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    try:
        return parse_iso_ms(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r}: use 30m, 2h, 1d or an ISO 8601 time like 2025-11-26T18:00:00Z"
        ) from exc


def _print_json(settings: Settings, flt: TraceFilter, limit: int, trace_type: str | None) -> None:
    if not store_exists(settings):
        sys.stdout.write("[]\n")
        return
    store = open_store_or_exit(settings)
    try:
        if store.dialect is SQLITE:
            rows = newest_trace_rows(store.conn, flt, limit, trace_type)
            write_json_array(with_sources(store.conn, rows), sys.stdout)
        else:  # PostgreSQL: the store's own query, written compactly
            rows = store.traces(flt.workspace_hash, flt.since_ms, limit, trace_type)
            sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
    finally:
        store.close()
    sys.stdout.flush()


@app.command()
def traces(
    json_out: JsonOpt = False,
    workspace: Annotated[
        str | None, typer.Option(help="Only this workspace_hash (or a folder path).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Since: 30m, 2h, 1d, or ISO 8601.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most N traces (the newest).")] = 50,
    trace_type: Annotated[str | None, typer.Option("--type", help="Only this trace_type.")] = None,
) -> None:
    """Captured traces from the local store, oldest first."""
    settings = settings_or_exit()
    since_ms = parse_since(since) if since else None
    whash = workspace
    if workspace and not re.fullmatch(r"[0-9a-f]{16}", workspace):
        whash = workspace_hash(normalise_workspace_path(workspace))
    if json_out:
        # Streamed as compact records, one per line: no list in memory, no pretty-printer.
        _print_json(settings, TraceFilter(whash, since_ms), limit, trace_type)
        return
    if not store_exists(settings):
        rows: list[dict[str, Any]] = []
    else:
        store = open_store_or_exit(settings)
        try:
            rows = store.traces(whash, since_ms, limit, trace_type)
        finally:
            store.close()
    table = Table(title=f"Traces ({len(rows)})")
    for col in (
        "time",
        "type",
        "workspace",
        "session",
        "id",
        "role / kind",
        "model",
        "tokens",
        "text",
        "sources",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*trace_cells(r), ", ".join(r.get("sources", [])))
    out.print(table)
