"""``blueplane compare``: the parallel run of both monitors, from the store (DESIGN §6).

Exit codes: 0 when the Python monitor missed nothing the extension saw in the window, 1 when
it missed something, 2 on bad input (a bad ``--since``, a store that cannot be read).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from typing import Annotated

import typer
from rich.table import Table

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.cli.common import JsonOpt, app, err, out, settings_or_exit
from blueplane.cli.traces import parse_since
from blueplane.compare import CompareReport, Unusable, compare, dead_letter_unusable
from blueplane.config import Settings
from blueplane.events import normalise_workspace_path, workspace_hash
from blueplane.fast_path.dead_letters import iter_dead_letters
from blueplane.store import TraceStore

DEFAULT_SINCE = "24h"
SHOWN = 20  # rows of each list in the human output


async def _dead_letters(settings: Settings, since_ms: int, until_ms: int) -> list[Unusable]:
    client = make_client(await resolve_client_url(settings))
    try:
        letters = [
            d async for d in iter_dead_letters(client, settings.fast_path.dead_letter_stream)
        ]
    finally:
        await client.aclose()
    return dead_letter_unusable(letters, since_ms, until_ms)


def _bad_input(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


@app.command("compare")
def compare_cmd(
    json_out: JsonOpt = False,
    since: Annotated[
        str, typer.Option(help="Window start: 30m, 2h, 1d, or ISO 8601 (default 24h).")
    ] = DEFAULT_SINCE,
    workspace: Annotated[
        str | None, typer.Option(help="Only this workspace_hash (or a folder path).")
    ] = None,
) -> None:
    """Compare the Python monitor with the extension's TypeScript monitor over a window."""
    settings = settings_or_exit()
    try:
        since_ms = parse_since(since)
    except typer.BadParameter as exc:
        raise _bad_input(f"--since {exc}") from exc
    until_ms = int(time.time() * 1000)
    whash = workspace
    if workspace and not re.fullmatch(r"[0-9a-f]{16}", workspace):
        whash = workspace_hash(normalise_workspace_path(workspace))
    path = settings.store_path
    if not path.is_file():
        raise _bad_input(f"no store at {path}: has the server (or `consume`) ever run here?")
    try:
        dead: list[Unusable] | None = asyncio.run(_dead_letters(settings, since_ms, until_ms))
    except REDIS_DOWN as exc:
        err.print(f"[yellow]warning:[/yellow] dead letters not read: {exc}", highlight=False)
        dead = None
    try:
        store = TraceStore(path, readonly=True)
        try:
            report = compare(store.conn, since_ms, until_ms, whash, dead)
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise _bad_input(f"cannot read the store {path}: {exc}") from exc
    if json_out:
        out.print_json(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        _print(report)
    raise typer.Exit(report.exit_code)


def _print(report: CompareReport) -> None:
    data = report.to_json()
    out.print(
        f"Window {data['since']} → {data['until']}"
        + (f", workspace {report.workspace}" if report.workspace else ""),
        highlight=False,
    )
    out.print(
        f"extension: {report.extension_events} generation(s), "
        f"{data['unusable_extension_events']} unusable event(s); "
        f"Python: {report.python_events} generation(s)",
        highlight=False,
    )
    verdict = (
        f"[red]missing in Python: {len(report.missing_in_python)}[/red]"
        if report.missing_in_python
        else "[green]missing in Python: 0[/green]"
    )
    out.print(
        f"matched {report.matched}  {verdict}  "
        f"missing in extension: {len(report.missing_in_extension)}  "
        f"field differences: {len(report.field_differences)}"
    )
    for reason, n in data["unusable_reasons"].items():
        out.print(f"  unusable ({n}): {reason}", highlight=False)
    for note in report.notes:
        out.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if report.workspaces:
        table = Table(title="Per workspace")
        for col in ("workspace", "extension", "python", "matched", "missing in Python",
                    "missing in extension"):  # fmt: skip
            table.add_column(col)
        for h, c in sorted(report.workspaces.items()):
            table.add_row(
                h, str(c.extension_events), str(c.python_events), str(c.matched),
                str(c.missing_in_python), str(c.missing_in_extension),
            )  # fmt: skip
        out.print(table)
    for title, items in (
        ("Missing in Python", report.missing_in_python),
        ("Missing in extension", report.missing_in_extension),
    ):
        if items:
            out.print(f"{title}:")
            for it in items[:SHOWN]:
                out.print(f"  {it['workspace_hash']}  {it['generation_id']}", highlight=False)
            if len(items) > SHOWN:
                out.print(f"  … and {len(items) - SHOWN} more (--json lists all)")
    if report.field_differences:
        out.print("Field differences:")
        for d in report.field_differences[:SHOWN]:
            out.print(
                f"  {d['generation_id']} {d['field']}: python={d['python']!r} "
                f"extension={d['extension']!r}",
                highlight=False,
            )
