"""``blueplane export``: traces as JSONL or CSV, conversations as Markdown files."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from blueplane.cli.common import app, err, open_store_or_exit, settings_or_exit
from blueplane.cli.traces import parse_since
from blueplane.events import normalise_workspace_path, workspace_hash
from blueplane.export import (
    TraceFilter,
    conversation_markdown,
    iter_trace_rows,
    markdown_file_name,
    with_sources,
    write_csv,
    write_jsonl,
)
from blueplane.store import TraceStore
from blueplane.store_schema import SQLITE
from blueplane.stores import store_exists


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    markdown = "markdown"


def resolve_workspace(workspace: str | None) -> str | None:
    """A workspace_hash as given, or the hash of a folder path."""
    if workspace and not re.fullmatch(r"[0-9a-f]{16}", workspace):
        return workspace_hash(normalise_workspace_path(workspace))
    return workspace


@app.command()
def export(
    fmt: Annotated[Format, typer.Option("--format", help="jsonl, csv or markdown.")],
    since: Annotated[str | None, typer.Option(help="Since: 30m, 2h, 1d, or ISO 8601.")] = None,
    workspace: Annotated[
        str | None, typer.Option(help="Only this workspace_hash (or a folder path).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="File (jsonl, csv; default stdout) or folder (markdown)."
        ),
    ] = None,
) -> None:
    """Export captured traces (JSONL, CSV) or conversations (Markdown, one file each)."""
    settings = settings_or_exit()
    flt = TraceFilter(resolve_workspace(workspace), parse_since(since) if since else None)
    if fmt is Format.markdown and output is None:
        raise typer.BadParameter("markdown needs --output FOLDER", param_hint="--output")
    if not store_exists(settings):
        err.print(f"no store yet at {settings.store_path}: nothing captured", highlight=False)
        if fmt is not Format.markdown:
            _write_traces(fmt, None, flt, output)
        return
    store = open_store_or_exit(settings)
    try:
        if fmt is Format.markdown:
            assert output is not None
            n = export_markdown(store, flt, output)
            err.print(f"{n} conversation(s) written to {output}", highlight=False)
        else:
            _write_traces(fmt, store, flt, output)
    finally:
        store.close()


def _write_traces(
    fmt: Format, store: TraceStore | None, flt: TraceFilter, output: Path | None
) -> None:
    rows: Iterator[Any] = iter(())
    if store is not None:
        tiebreak = "rowid" if store.dialect is SQLITE else "stream_id"
        rows = with_sources(store.conn, iter_trace_rows(store.conn, flt, tiebreak))
    writer = write_jsonl if fmt is Format.jsonl else write_csv
    if output is None:
        writer(rows, sys.stdout)
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8", newline="", buffering=1 << 20) as fh:
        n = writer(rows, fh)
    err.print(f"{n} trace(s) written to {output}", highlight=False)


def export_markdown(store: TraceStore, flt: TraceFilter, folder: Path) -> int:
    """One Markdown file per conversation; returns how many were written."""
    try:
        from blueplane import conversations  # issue 11's module
    except ImportError as exc:
        err.print("[red]error:[/red] this build has no conversations module", highlight=False)
        raise typer.Exit(1) from exc

    folder.mkdir(parents=True, exist_ok=True)
    convs = conversations.list_conversations(
        store, workspace=flt.workspace_hash, since_ms=flt.since_ms, limit=1_000_000
    )
    n = 0
    for conv in convs:
        got = conversations.get_conversation(store, conv.conversation_id)
        if got is None:
            continue
        full, turns = got
        path = folder / markdown_file_name(full)
        _write_text(path, conversation_markdown(full, turns))
        n += 1
    return n


def _write_text(path: Path, text: str) -> None:
    fh: IO[str]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
