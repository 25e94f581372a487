"""``bubbleId:<composerId>:<bubbleId>`` in the global ``cursorDiskKV``: one message each.

Streaming rule. Cursor rewrites an assistant bubble many times while it streams (text grows;
``tokenCount`` and ``timingInfo`` are filled at the end). A bubble is sent once it is *settled*:

- a user bubble, or any bubble that is not an assistant's: at once (``settled_by: "user"``);
- an assistant bubble carrying Cursor's end markers — ``timingInfo.clientEndTime`` or
  ``clientSettleTime``, or a non-zero ``tokenCount`` (``"end_marker"``). A tool call's
  ``status`` is not one: Cursor may write "completed" while the bubble's text still streams;
- an assistant bubble after which a *new* bubble of the same composer was written
  (``"later_bubble"``): the turn moved on;
- an assistant bubble unchanged for ``SETTLE_QUIET_MS`` across polls (``"quiet"``).

Until then it is *pending*: its key and content hash sit in the watermark (bounded) and it is
re-read by exact key on each poll. A change to a bubble already sent is sent again with
``revision + 1``; an unchanged rewrite is not sent.

Time: a bubble's time is its ``createdAt`` or its timing; a bubble with neither takes the latest
time of another bubble of the same composer in the same read, else it has none and is never
judged outside the sync window.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from blueplane.cursor.layouts.base import LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.conversation import (
    assistant_settled,
    bubble_time_ms,
    iso_ms,
    payload_hash,
    revisions_of,
    role_of,
    same_payload,
    too_old,
    wire_message,
)
from blueplane.cursor.layouts.disk_kv import (
    TABLE,
    OldRow,
    Row,
    RowScan,
    has_prefix,
    next_watermark_rowid,
    prefix_range,
    read_keys,
    read_prefixes,
    scan_new,
    summarise,
)
from blueplane.cursor.layouts.jsonvalue import BadValue, load_json
from blueplane.events import iso_from_ms
from blueplane.events.wire import WirePayload

PREFIX = "bubbleId:"
BATCH = 500
SETTLE_QUIET_MS = 60_000
PENDING_CAP = 1_000


@dataclass
class BubbleRaw:
    scan: RowScan
    pending_rows: list[Row] = field(default_factory=list)
    targeted: bool = False

    @property
    def values_read(self) -> int:
        return self.scan.values_read + len(self.pending_rows)


@dataclass
class _Parsed:
    rowid: int
    key: str
    composer_id: str
    bubble_id: str
    bubble: dict[str, Any]
    ts: int | None


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def newest_first(conn: sqlite3.Connection, composer_ids: Iterable[str]) -> list[str]:
    """Composers whose newest bubble was written last first (its rowid, from the key index
    alone: no value is read), so that a session-start re-read sends the conversations in use
    before a long history whose bubbles are outside the sync window."""
    newest: dict[str, int] = {}
    q = f"SELECT MAX(rowid) FROM {TABLE} WHERE key >= ? AND key < ?"
    for cid in composer_ids:
        row = conn.execute(q, prefix_range(f"{PREFIX}{cid}:")).fetchone()
        newest[cid] = int(row[0]) if row and row[0] is not None else 0
    return sorted(newest, key=lambda c: (-newest[c], c))


class GlobalBubbles:
    name: ClassVar[str] = "disk_bubbles"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        return has_prefix(conn, tables, PREFIX)

    def fetch(
        self, conn: sqlite3.Connection, watermark: Watermark, cutoff_ms: int | None = None
    ) -> BubbleRaw:
        """New rows; with ``cutoff_ms``, bubbles created before it are not loaded (time only).

        The SQL filter is an hour more lenient than the window: ``extract`` decides.
        """
        older = iso_from_ms(cutoff_ms - 3_600_000) if cutoff_ms is not None else None
        scan = scan_new(conn, PREFIX, watermark, BATCH, older_than_iso=older)
        seen = {r[1] for r in scan.rows}
        pending = watermark.get("pending")
        keys = [k for k in pending if k not in seen] if isinstance(pending, dict) else []
        return BubbleRaw(scan, read_keys(conn, keys))

    def revision_keys(self, raw: BubbleRaw) -> list[str]:
        """Revision-memory keys of the bubbles read (their memory lives in Redis)."""
        out = []
        for _rowid, key, value in [*raw.scan.rows, *raw.pending_rows]:
            if isinstance(value, OldRow):
                continue
            ids = split_key(key)
            if ids is not None:
                out.append(f"m:{ids[1]}")
        return out

    def fetch_composers(
        self, conn: sqlite3.Connection, composer_ids: Iterable[str], cutoff_ms: int | None = None
    ) -> BubbleRaw:
        """Every bubble of the given composers, by key range (targeted re-read); with
        ``cutoff_ms``, as in ``fetch``, bubbles created before it are not loaded."""
        older = iso_from_ms(cutoff_ms - 3_600_000) if cutoff_ms is not None else None
        rows = read_prefixes(conn, [f"{PREFIX}{cid}:" for cid in composer_ids], older)
        return BubbleRaw(RowScan(rows, next_rowid=None), targeted=True)

    def extract(self, raw: BubbleRaw, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        revs = revisions_of(watermark)
        old_pending = watermark.get("pending")
        pending: dict[str, list[Any]] = dict(old_pending) if isinstance(old_pending, dict) else {}
        problems: list[str] = []
        bad: list[str] = []
        parsed: list[_Parsed] = []
        old_ts: dict[str, int] = {}  # latest time of each composer's unloaded (old) bubbles
        rows = sorted([*raw.scan.rows, *raw.pending_rows], key=lambda r: r[0])
        if not raw.targeted:
            for key in set(pending) - {r[1] for r in rows}:
                pending.pop(key, None)  # every pending key is re-read: absent means deleted
        for rowid, key, value in rows:
            ids = split_key(key)
            if ids is None:
                bad.append(f"{key!r}: key is not bubbleId:<composer>:<bubble>")
                continue
            if value is None:
                pending.pop(key, None)  # NULL: deleted or empty draft; nothing to send
                continue
            if isinstance(value, OldRow):  # outside the sync window: only its time was read
                pending.pop(key, None)
                if (ts := iso_ms(value.created_at)) is not None:
                    old_ts[ids[0]] = max(old_ts.get(ids[0], 0), ts)
                continue
            try:
                bubble = load_json(key, value)
            except BadValue as exc:
                pending.pop(key, None)
                bad.append(str(exc))
                continue
            if not isinstance(bubble, dict):
                bad.append(f"{key} is a JSON {type(bubble).__name__}, not an object")
                continue
            parsed.append(_Parsed(rowid, key, ids[0], ids[1], bubble, bubble_time_ms(bubble)))
        problems.extend(summarise("bubbles", bad))
        # Latest time per composer (for untimed bubbles) and new bubbles (for "later_bubble").
        composer_ts: dict[str, int] = dict(old_ts)
        newest_new: dict[str, list[tuple[int, str]]] = {}
        for p in parsed:
            if p.ts is not None:
                composer_ts[p.composer_id] = max(composer_ts.get(p.composer_id, 0), p.ts)
            if not revs.known(f"m:{p.bubble_id}") and p.key not in pending:
                newest_new.setdefault(p.composer_id, []).append((p.rowid, p.bubble_id))
        items: list[TraceItem] = []
        for p in parsed:
            ts = p.ts if p.ts is not None else composer_ts.get(p.composer_id)
            if too_old(ts, ctx):
                pending.pop(p.key, None)
                continue
            msg = wire_message(
                p.bubble,
                bubble_id=p.bubble_id,
                composer_id=p.composer_id,
                ctx=ctx,
                source_layout=self.name,
            )
            settled_by = self._settled(p, msg, pending, newest_new, ctx)
            if settled_by is None:
                continue
            pending.pop(p.key, None)
            msg = msg.replace(settled_by=settled_by)
            stamped = revs.stamp(f"m:{p.bubble_id}", msg)
            if stamped is not None:
                items.append(TraceItem(payload=stamped, timestamp_ms=ts))
        while len(pending) > PENDING_CAP:
            del pending[next(iter(pending))]
        wm: Watermark = {
            "rowid": next_watermark_rowid(raw.scan, watermark),
            "sent": revs.dump(),
            "pending": pending,
        }
        if raw.scan.top is not None:
            wm["max_rowid"] = raw.scan.top
        if not raw.scan.complete:
            wm["more"] = True
        if raw.targeted:
            wm = dict(watermark)  # a targeted re-read never moves the watermark
        return LayoutRead(items=items, watermark=wm, problems=problems)

    @staticmethod
    def _settled(
        p: _Parsed,
        msg: WirePayload,
        pending: dict[str, list[Any]],
        newest_new: dict[str, list[tuple[int, str]]],
        ctx: ReadContext,
    ) -> str | None:
        if role_of(p.bubble.get("type")) != "assistant":
            return "user"
        if assistant_settled(p.bubble):
            return "end_marker"
        if any(r > p.rowid and b != p.bubble_id for r, b in newest_new.get(p.composer_id, [])):
            return "later_bubble"
        h = payload_hash(msg)
        prev = pending.get(p.key)
        if isinstance(prev, list) and len(prev) >= 2 and same_payload(prev[0], h, msg):
            since = prev[1] if isinstance(prev[1], int) else ctx.now_ms
            if ctx.now_ms - since >= SETTLE_QUIET_MS:
                return "quiet"
            return None
        pending.pop(p.key, None)
        pending[p.key] = [h, ctx.now_ms, p.rowid]
        return None
