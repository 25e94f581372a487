"""The parallel run's verdict: what the extension's TypeScript monitor saw that we did not.

Reads the store's ``trace_sources`` (one row per generation and monitor, see
``blueplane.trace_sources``) for a window and compares on the key
``(workspace_hash, generation_id)`` (typescript-monitor-events.md):

- matched: both monitors reported it; their description, type and generation time (when the
  extension gives one) are compared field by field;
- missing in Python: only the extension reported it (the number that decides the rollout);
- missing in the extension: only we reported it.

A generation belongs to the window by its earliest known time (its generation time when a side
gives one, else the event's time, else when it was stored). Extension events that cannot be
compared are counted with their reason: those the consumer dead-lettered (malformed JSON, no
``generation_id``…, read from the dead-letter stream) and those it stored without the key (no
``workspace_hash``) or of another trace type. The JSON shape is DESIGN §6.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blueplane.events import iso_from_ms, parse_iso_ms
from blueplane.fast_path.dead_letters import DeadLetter
from blueplane.store_schema import is_missing_table
from blueplane.trace_sources import EXTENSION, PYTHON

if TYPE_CHECKING:
    from blueplane.conversation_index import IndexConn

MAX_LISTED_UNUSABLE = 100


@dataclass(slots=True)
class SourceFacts:
    source: str
    description: str | None
    generation_type: str | None
    generation_ms: int | None
    at_ms: int


@dataclass(slots=True)
class Unusable:
    reason: str
    stream_id: str | None
    workspace_hash: str | None = None
    where: str = "store"  # "store" (kept, not comparable) or "dead_letters"


@dataclass(slots=True)
class WorkspaceCounts:
    matched: int = 0
    missing_in_python: int = 0
    missing_in_extension: int = 0
    extension_events: int = 0
    python_events: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "missing_in_python": self.missing_in_python,
            "missing_in_extension": self.missing_in_extension,
            "extension_events": self.extension_events,
            "python_events": self.python_events,
            "extension_sent": self.extension_events > 0,
            "python_sent": self.python_events > 0,
        }


@dataclass(slots=True)
class CompareReport:
    since_ms: int
    until_ms: int
    workspace: str | None = None
    extension_events: int = 0
    python_events: int = 0
    matched: int = 0
    missing_in_python: list[dict[str, str]] = field(default_factory=list)
    missing_in_extension: list[dict[str, str]] = field(default_factory=list)
    field_differences: list[dict[str, Any]] = field(default_factory=list)
    workspaces: dict[str, WorkspaceCounts] = field(default_factory=dict)
    unusable: list[Unusable] = field(default_factory=list)
    dead_letters_read: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: Python missed nothing the extension saw; 1: it missed something."""
        return 1 if self.missing_in_python else 0

    def to_json(self) -> dict[str, Any]:
        reasons = Counter(u.reason for u in self.unusable)
        return {
            "since": iso_from_ms(self.since_ms),
            "until": iso_from_ms(self.until_ms),
            "workspace": self.workspace,
            "extension_events": self.extension_events,
            "python_events": self.python_events,
            "unusable_extension_events": len(self.unusable),
            "unusable_reasons": dict(reasons.most_common()),
            "unusable": [
                {
                    "reason": u.reason,
                    "stream_id": u.stream_id,
                    "workspace_hash": u.workspace_hash,
                    "where": u.where,
                }
                for u in self.unusable[:MAX_LISTED_UNUSABLE]
            ],
            "matched": self.matched,
            "missing_in_python": self.missing_in_python,
            "missing_in_extension": self.missing_in_extension,
            "field_differences": self.field_differences,
            "workspaces": {h: c.to_json() for h, c in sorted(self.workspaces.items())},
            "extension_sent_anything": self.extension_events > 0 or bool(self.unusable),
            "python_sent_anything": self.python_events > 0,
            "dead_letters_read": self.dead_letters_read,
            "notes": self.notes,
        }


def _iso(ms: int | None) -> str | None:
    return iso_from_ms(ms) if ms is not None else None


def _differences(
    key: tuple[str, str], ours: SourceFacts, theirs: SourceFacts
) -> list[dict[str, Any]]:
    out = []
    pairs: list[tuple[str, Any, Any]] = [
        ("description", ours.description, theirs.description),
        ("type", ours.generation_type, theirs.generation_type),
    ]
    if theirs.generation_ms is not None:  # the extension gives one: compare it
        pairs.append(("generation_time", _iso(ours.generation_ms), _iso(theirs.generation_ms)))
    for name, py, ext in pairs:
        if py != ext:
            out.append(
                {"workspace_hash": key[0], "generation_id": key[1], "field": name,
                 "python": py, "extension": ext}
            )  # fmt: skip
    return out


def compare(
    conn: IndexConn,
    since_ms: int,
    until_ms: int,
    workspace: str | None = None,
    dead_letters: Iterable[Unusable] | None = None,
) -> CompareReport:
    """The report for the window; ``dead_letters`` are the extension's rejected entries
    (None: the dead-letter stream could not be read, which the report says)."""
    report = CompareReport(since_ms, until_ms, workspace)
    try:
        by_key = _generations(conn, since_ms, until_ms, workspace)
    except Exception as exc:
        if not is_missing_table(exc):
            raise
        by_key = {}  # a store no server of this version has opened yet
        report.notes.append("the store has no trace sources yet: start the server once")
    for key in sorted(by_key):
        facts = by_key[key]
        ws = report.workspaces.setdefault(key[0], WorkspaceCounts())
        ours, theirs = facts.get(PYTHON), facts.get(EXTENSION)
        ident = {"workspace_hash": key[0], "generation_id": key[1]}
        if theirs is not None:
            report.extension_events += 1
            ws.extension_events += 1
        if ours is not None:
            report.python_events += 1
            ws.python_events += 1
        if ours is not None and theirs is not None:
            report.matched += 1
            ws.matched += 1
            report.field_differences.extend(_differences(key, ours, theirs))
        elif theirs is not None:
            report.missing_in_python.append(ident)
            ws.missing_in_python += 1
        elif ours is not None:
            report.missing_in_extension.append(ident)
            ws.missing_in_extension += 1
    report.unusable.extend(_stored_unusable(conn, since_ms, until_ms, workspace))
    if dead_letters is None:
        report.dead_letters_read = False
        report.notes.append(
            "the dead-letter stream could not be read: unusable extension events rejected "
            "by the consumer are not counted"
        )
    else:
        report.unusable.extend(
            d for d in dead_letters if workspace is None or d.workspace_hash == workspace
        )
    if report.extension_events == 0:
        report.notes.append(
            "the extension sent 0 usable events in the window: nothing could be compared "
            "(a finding, not a pass)"
        )
    if report.python_events == 0:
        report.notes.append("the Python monitor sent 0 generations in the window")
    return report


def _generations(
    conn: IndexConn, since_ms: int, until_ms: int, workspace: str | None
) -> dict[tuple[str, str], dict[str, SourceFacts]]:
    """Every report of each generation whose earliest time is in the window."""
    at = "COALESCE(generation_ms, timestamp_ms, received_at_ms)"
    where = f"{at} >= ? AND {at} <= ?"
    args: list[Any] = [since_ms, until_ms]
    if workspace:
        where += " AND workspace_hash = ?"
        args.append(workspace)
    sql = (
        "SELECT workspace_hash, generation_id, source, description, generation_type,"
        f" generation_ms, {at} FROM trace_sources WHERE (workspace_hash, generation_id) IN"
        f" (SELECT workspace_hash, generation_id FROM trace_sources WHERE {where})"
    )
    out: dict[tuple[str, str], dict[str, SourceFacts]] = {}
    for wh, gid, src, desc, gtype, gen_ms, at_ms in conn.execute(sql, args):
        out.setdefault((wh, gid), {})[src] = SourceFacts(src, desc, gtype, gen_ms, at_ms)
    # A generation first reported before the window belongs to the earlier window.
    return {k: v for k, v in out.items() if min(f.at_ms for f in v.values()) >= since_ms}


def _stored_unusable(
    conn: IndexConn, since_ms: int, until_ms: int, workspace: str | None
) -> list[Unusable]:
    """Extension events the consumer stored but that carry no comparison key."""
    sql = (
        "SELECT stream_id, workspace_hash, trace_type, metadata FROM events"
        " WHERE event_type = 'database_trace' AND hook_type = 'DatabaseTrace'"
        " AND (workspace_hash IS NULL OR trace_type IS NULL OR trace_type <> 'generation')"
        " AND COALESCE(timestamp_ms, received_at_ms) >= ?"
        " AND COALESCE(timestamp_ms, received_at_ms) <= ?"
    )
    out = []
    for stream_id, wh, ttype, metadata in conn.execute(sql, (since_ms, until_ms)):
        try:
            meta = json.loads(metadata) if metadata else {}
        except json.JSONDecodeError:
            meta = {}
        if not isinstance(meta, dict) or "source" in meta:
            continue  # ours or another tool's, not the extension's
        if workspace and wh != workspace:
            continue
        reason = (
            "no workspace_hash in metadata"
            if wh is None
            else f"trace_type {ttype!r} is not a generation"
        )
        out.append(Unusable(reason, stream_id, wh, "store"))
    return out


def is_extension_entry(fields: dict[str, Any]) -> bool:
    """An original stream entry in the TypeScript monitor's shape (even a broken one)."""
    if fields.get("event_type") not in ("database_trace", None) or "version" in fields:
        return False
    if fields.get("hook_type") != "DatabaseTrace" and "external_session_id" not in fields:
        return False
    try:
        meta = json.loads(fields.get("metadata") or "{}")
    except (json.JSONDecodeError, TypeError):
        return True  # malformed metadata: still theirs (ours always has "source")
    return not (isinstance(meta, dict) and "source" in meta)


def _entry_ms(d: DeadLetter) -> int | None:
    """When the original entry was added to the stream (its id), else when it was rejected."""
    head = (d.original_id or "").split("-", 1)[0]
    if head.isdigit():
        return int(head)
    try:
        return parse_iso_ms(d.rejected_at) if d.rejected_at else None
    except ValueError:
        return None


def dead_letter_unusable(
    letters: Iterable[DeadLetter], since_ms: int, until_ms: int
) -> list[Unusable]:
    """The extension's entries among the dead letters of the window, with the reason."""
    out = []
    for d in letters:
        at = _entry_ms(d)
        if at is None or not since_ms <= at <= until_ms:
            continue
        original = d.fields or {}
        if not is_extension_entry(original):
            continue
        wh = None
        try:
            meta = json.loads(original.get("metadata") or "{}")
            if isinstance(meta, dict):
                got = meta.get("workspace_hash") or meta.get("workspaceHash")
                wh = got if isinstance(got, str) else None
        except (json.JSONDecodeError, TypeError):
            pass
        out.append(Unusable(d.reason or "rejected", d.original_id or d.id, wh, "dead_letters"))
    return out
