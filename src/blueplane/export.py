"""Streaming exports of the store: JSONL and CSV of traces, Markdown of conversations.

A million traces must not be held in memory: rows come off an SQLite cursor in the order of an
index (no sort of the whole table), and each is written as soon as it is read. The JSON record
is the one ``traces --json`` gives (``_trace_row`` of store.py); it is assembled as text around
the stored payload and metadata, which are already JSON, instead of parsing and serialising
them again (that, not SQLite, was the cost of ``traces --json``).
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from blueplane import trace_sources
from blueplane.store_schema import is_missing_table

# The columns of a stored trace, in the order of the JSON record.
_COLUMNS = (
    "event_id, stream_id, timestamp, timestamp_ms, received_at_ms, session_id,"
    " workspace_hash, trace_type, generation_id, revision, payload, metadata"
)
_KEYS = (
    "event_id", "stream_id", "timestamp", "timestamp_ms", "received_at_ms", "session_id",
    "workspace_hash", "trace_type", "generation_id", "revision",
)  # fmt: skip
_dumps = json.JSONEncoder(ensure_ascii=False).encode

# The documented CSV columns (README "Export"): never renamed or reordered, only appended.
CSV_COLUMNS = (
    "event_id", "timestamp", "timestamp_ms", "received_at_ms", "workspace_hash", "session_id",
    "trace_type", "generation_id", "revision", "conversation_id", "role", "model",
    "input_tokens", "output_tokens", "text", "sources",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TraceFilter:
    workspace_hash: str | None = None
    since_ms: int | None = None


def iter_trace_rows(
    conn: sqlite3.Connection, flt: TraceFilter, tiebreak: str = "rowid"
) -> Iterator[tuple[Any, ...]]:
    """Stored traces oldest first (by their time, then the order they were written), streamed.

    Traces without a time of their own (``timestamp_ms`` NULL) come first, filtered on when they
    were received; the rest follow the time index. Two queries, so each uses an index and
    none sorts the table. ``tiebreak``: ``rowid`` on SQLite, ``stream_id`` on PostgreSQL (which
    has no rowid; its driver also fetches a query's rows at once, so there memory is not flat).
    """
    base = f"SELECT {_COLUMNS} FROM events WHERE event_type = 'database_trace'"
    ws = " AND workspace_hash = ?" if flt.workspace_hash else ""
    ws_args: tuple[Any, ...] = (flt.workspace_hash,) if flt.workspace_hash else ()
    since = flt.since_ms
    yield from conn.execute(
        base + ws + " AND timestamp_ms IS NULL"
        + (" AND received_at_ms >= ?" if since is not None else "")
        + f" ORDER BY received_at_ms, {tiebreak}",
        ws_args + ((since,) if since is not None else ()),
    )  # fmt: skip
    timed = " AND timestamp_ms >= ?" if since is not None else " AND timestamp_ms IS NOT NULL"
    yield from conn.execute(
        base + ws + timed + f" ORDER BY timestamp_ms, {tiebreak}",
        ws_args + ((since,) if since is not None else ()),
    )  # fmt: skip


def newest_trace_rows(
    conn: sqlite3.Connection, flt: TraceFilter, limit: int, trace_type: str | None = None
) -> Iterator[tuple[Any, ...]]:
    """The newest ``limit`` traces, oldest first, as ``TraceStore.traces`` selects them, streamed
    (SQLite orders the limited set; Python never holds it)."""
    where = ["event_type = 'database_trace'"]
    args: list[Any] = []
    if flt.workspace_hash:
        where.append("workspace_hash = ?")
        args.append(flt.workspace_hash)
    if flt.since_ms is not None:
        where.append("COALESCE(timestamp_ms, received_at_ms) >= ?")
        args.append(flt.since_ms)
    if trace_type:
        where.append("trace_type = ?")
        args.append(trace_type)
    # The newest keys first (a sort of small rows), then their rows in order.
    sql = (
        f"SELECT {_COLUMNS} FROM (SELECT rowid AS r, COALESCE(timestamp_ms, received_at_ms) AS t,"
        f" stream_id AS s FROM events WHERE {' AND '.join(where)} ORDER BY t DESC, s DESC"
        " LIMIT ?) AS k CROSS JOIN events ON events.rowid = k.r ORDER BY k.t, k.s"
    )
    yield from conn.execute(sql, (*args, limit))


def trace_json(row: tuple[Any, ...], sources: list[str]) -> str:
    """The ``traces --json`` record of one row, as compact JSON text (no newline)."""
    head = _dumps(dict(zip(_KEYS, row, strict=False)))  # one C call for the ten columns
    return "".join((
        head[:-1], ', "payload": ', row[10] or "{}", ', "metadata": ', row[11] or "{}",
        ', "sources": ', _dumps(sources), "}",
    ))  # fmt: skip


def with_sources(
    conn: sqlite3.Connection, rows: Iterator[tuple[Any, ...]], chunk: int = 1000
) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
    """Each row with its ``sources`` as ``TraceStore.traces`` gives them: every monitor that
    reported a generation (``trace_sources``), else the trace's own ``metadata.source``, else
    the extension (which sends none). Looked up a chunk of rows at a time."""
    buf: list[tuple[Any, ...]] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= chunk:
            yield from _sourced(conn, buf)
            buf = []
    if buf:
        yield from _sourced(conn, buf)


def _sourced(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]]
) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
    keys = [(r[6], r[8]) for r in rows if r[7] == "generation" and r[6] and r[8]]
    known: dict[tuple[str, str], list[str]] = {}
    if keys:
        try:
            known = trace_sources.sources_for(conn, keys)
        except Exception as exc:
            if not is_missing_table(exc):
                raise  # a store written before trace_sources existed has none
    for r in rows:
        found = known.get((r[6], r[8]))  # as TraceStore.traces: by generation, any trace type
        if found is None:
            own = _obj(r[11]).get("source")
            found = [own if isinstance(own, str) else trace_sources.EXTENSION]
        yield r, found


def write_jsonl(rows: Iterator[tuple[tuple[Any, ...], list[str]]], out: IO[str]) -> int:
    """One record per line (rows from ``with_sources``); returns how many."""
    n = 0
    write = out.write
    for row, sources in rows:
        write(trace_json(row, sources))
        write("\n")
        n += 1
    return n


def write_json_array(rows: Iterator[tuple[tuple[Any, ...], list[str]]], out: IO[str]) -> int:
    """A JSON array, one record per line (``traces --json``); returns how many."""
    n = 0
    write = out.write
    write("[")
    for row, sources in rows:
        write("\n" if n == 0 else ",\n")
        write(trace_json(row, sources))
        n += 1
    write("\n]\n" if n else "]\n")
    return n


def csv_record(row: tuple[Any, ...], sources: list[str]) -> list[Any]:
    """The documented CSV columns of one row."""
    (event_id, _stream_id, ts, ts_ms, recv_ms, session_id, whash, ttype, gen_id, rev,
     payload, metadata) = row  # fmt: skip
    p = _obj(payload)
    m = _obj(metadata)
    text = p.get("text") or p.get("prompt_text") or p.get("description") or p.get("name") or ""
    return [
        event_id, ts or "", ts_ms if ts_ms is not None else "", recv_ms, whash or "",
        session_id or "", ttype or "", gen_id or "", rev,
        p.get("composer_id") or m.get("conversation_id") or "", p.get("role") or "",
        p.get("model") or p.get("model_name") or "", _num(p.get("input_tokens")),
        _num(p.get("output_tokens")), text, " ".join(sources),
    ]  # fmt: skip


def write_csv(rows: Iterator[tuple[tuple[Any, ...], list[str]]], out: IO[str]) -> int:
    """A header line, then one line per trace; returns how many traces."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n = 0
    for row, sources in rows:
        w.writerow(csv_record(row, sources))
        n += 1
    return n


def _obj(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else ""


# ----------------------------------------------------------------------------- Markdown
_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)


def markdown_file_name(conv: Any) -> str:
    """``YYYY-MM-DD-title-words-<id8>.md``: sorted by date, readable, unique per conversation."""
    date = (conv.first_at or conv.last_at or "")[:10] or "undated"
    title = _UNSAFE.sub("-", (conv.title or "untitled").strip().lower()).strip("-")[:60]
    return f"{date}-{title or 'untitled'}-{conv.conversation_id[:8]}.md"


def _tokens(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def conversation_markdown(conv: Any, turns: list[Any]) -> str:
    """A conversation as a chat: a header with model and tokens, then each turn."""
    lines = [f"# {conv.title or 'Untitled conversation'}", ""]
    lines.append(f"- Conversation: `{conv.conversation_id}`")
    if conv.workspace_path or conv.workspace_hash:
        lines.append(f"- Workspace: {conv.workspace_path or conv.workspace_hash}")
    lines.append(f"- Models: {', '.join(conv.models) if conv.models else 'unknown'}")
    lines.append(f"- Started: {conv.first_at or 'unknown'}; last: {conv.last_at or 'unknown'}")
    lines.append(
        f"- Tokens: {_tokens(conv.input_tokens)} in, {_tokens(conv.output_tokens)} out"
        + (
            f", {_tokens(conv.cache_read_tokens)} cache read"
            if conv.cache_read_tokens is not None
            else ""
        )
    )
    lines.append(f"- Turns: {conv.turns}")
    for i, t in enumerate(turns, 1):
        lines += ["", "---", ""]
        head = f"## Turn {i}"
        if t.started_at:
            head += f" · {t.started_at}"
        lines += [head, ""]
        if t.prompt:
            lines += ["**User**", "", t.prompt.strip(), ""]
        meta = [t.model or "unknown model"]
        if t.input_tokens is not None or t.output_tokens is not None:
            meta.append(f"{_tokens(t.input_tokens)} in / {_tokens(t.output_tokens)} out tokens")
        if t.duration_ms is not None:
            meta.append(f"{t.duration_ms / 1000:.1f} s")
        lines += [f"**Assistant** ({', '.join(meta)})", ""]
        if t.response:
            lines += [t.response.strip(), ""]
        else:
            lines += ["_(no text captured)_", ""]
        for tool in t.tools:
            state = "ok" if tool.ok else ("failed" if tool.ok is False else "")
            took = f", {tool.duration_ms} ms" if tool.duration_ms is not None else ""
            lines.append(f"- Tool `{tool.name}`{(' ' + state) if state else ''}{took}")
        if t.tools:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
