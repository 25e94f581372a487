"""The reconciled conversation tables, maintained by the store's writer inside each batch.

The same turn of a Cursor conversation is seen by up to three sources: the database monitor
(``message`` and ``composer`` traces), the hook command (``CursorHook`` events) and the
transcript follower (``transcript_message`` traces). Reading a conversation must not mean
re-reading and re-joining millions of traces, so every batch the fast path stores also
updates these tables, in the same transaction (``TraceStore.write_batch``):

- ``conv_conversations``: one row per conversation (workspace, title, parent, first/last time);
- ``conv_turns``: one row per turn, joined on ``(conversation_id, generation_id)``; a source
  that knows no generation id (a transcript) joins by the turn's position in the conversation;
- ``conv_tokens``: the token counts each source reported for a turn; the turn's four counts are
  taken from hooks (``afterAgentResponse``, else ``stop``: never both), else from the
  database's bubbles, else they stay NULL;
- ``conv_parts``: texts (prompt and response pieces) by source, so content comes from whichever
  source has it;
- ``conv_tools``: tool calls by their id (one row when hook and database both saw it);
- ``conv_sources``: which sources saw each turn (``turn_key`` ``''``: the conversation itself).

Applying an event twice changes nothing (every write is an upsert keyed by the event's own
item), so a redelivered or duplicate event needs no special case. The SQL is standard
(``INSERT … ON CONFLICT … DO UPDATE``, ``CASE``, no SQLite-only functions) so the PostgreSQL
store can run it too.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS conv_conversations (
    conversation_id         TEXT PRIMARY KEY,
    workspace_hash          TEXT,
    workspace_path          TEXT,
    title                   TEXT,
    parent_conversation_id  TEXT,
    first_ms                INTEGER,
    last_ms                 INTEGER
);
CREATE INDEX IF NOT EXISTS conv_by_last ON conv_conversations (last_ms);
CREATE INDEX IF NOT EXISTS conv_by_workspace ON conv_conversations (workspace_hash, last_ms);
CREATE TABLE IF NOT EXISTS conv_turns (
    conversation_id     TEXT NOT NULL,
    turn_key            TEXT NOT NULL,
    generation_id       TEXT,
    ordinal             INTEGER NOT NULL,
    tx_ordinal          INTEGER,
    model               TEXT,
    input_tokens        INTEGER,
    output_tokens       INTEGER,
    cache_read_tokens   INTEGER,
    cache_write_tokens  INTEGER,
    token_source        TEXT,
    started_ms          INTEGER,
    started_day         INTEGER,
    ended_ms            INTEGER,
    PRIMARY KEY (conversation_id, turn_key)
);
CREATE INDEX IF NOT EXISTS conv_turns_by_gen ON conv_turns (conversation_id, generation_id);
-- covering, in day order: token totals per day are one streaming pass over the index
CREATE INDEX IF NOT EXISTS conv_turns_by_day ON conv_turns (started_day, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens);
CREATE TABLE IF NOT EXISTS conv_tokens (
    conversation_id     TEXT NOT NULL,
    token_key           TEXT NOT NULL,
    turn_key            TEXT NOT NULL,
    kind                TEXT NOT NULL,
    input_tokens        INTEGER,
    output_tokens       INTEGER,
    cache_read_tokens   INTEGER,
    cache_write_tokens  INTEGER,
    PRIMARY KEY (conversation_id, token_key)
);
CREATE INDEX IF NOT EXISTS conv_tokens_by_turn ON conv_tokens (conversation_id, turn_key);
-- The text itself stays in the event's payload (``event_id``, field ``text_field``): it is not
-- stored twice.
CREATE TABLE IF NOT EXISTS conv_parts (
    conversation_id TEXT NOT NULL,
    source          TEXT NOT NULL,
    part_key        TEXT NOT NULL,
    turn_key        TEXT,
    role            TEXT NOT NULL,
    at_ms           INTEGER,
    seq             INTEGER,
    has_text        INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    text_field      TEXT NOT NULL,
    PRIMARY KEY (conversation_id, source, part_key)
);
CREATE TABLE IF NOT EXISTS conv_tools (
    conversation_id TEXT NOT NULL,
    tool_key        TEXT NOT NULL,
    turn_key        TEXT NOT NULL,
    name            TEXT,
    duration_ms     INTEGER,
    ok              INTEGER,
    at_ms           INTEGER,
    PRIMARY KEY (conversation_id, tool_key)
);
CREATE TABLE IF NOT EXISTS conv_sources (
    conversation_id TEXT NOT NULL,
    turn_key        TEXT NOT NULL,
    source          TEXT NOT NULL,
    PRIMARY KEY (conversation_id, turn_key, source)
);
"""

DATABASE, HOOK, TRANSCRIPT = "database", "hook", "transcript"
# The workspace of a transcript no hook event tied to a workspace (a CLI agent outside a folder).
UNKNOWN_WORKSPACE = "unknown"
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# Token counts of a turn, best first: afterAgentResponse and stop carry the same numbers.
TOKEN_PRIORITY = ("afterAgentResponse", "stop", DATABASE)
# A source without generation ids is matched to an existing turn no further away than this.
ADOPT_WINDOW_MS = 30 * 60 * 1000
INDEXED_TRACE_TYPES = ("message", "composer", "transcript_message")


_UPSERT_CONVERSATION = """
INSERT INTO conv_conversations (conversation_id, workspace_hash, workspace_path, title,
    parent_conversation_id, first_ms, last_ms)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (conversation_id) DO UPDATE SET
  workspace_hash = COALESCE(conv_conversations.workspace_hash, excluded.workspace_hash),
  workspace_path = COALESCE(conv_conversations.workspace_path, excluded.workspace_path),
  title = COALESCE(excluded.title, conv_conversations.title),
  parent_conversation_id = COALESCE(conv_conversations.parent_conversation_id,
                                    excluded.parent_conversation_id),
  first_ms = CASE WHEN conv_conversations.first_ms IS NULL
                    OR excluded.first_ms < conv_conversations.first_ms
                  THEN excluded.first_ms ELSE conv_conversations.first_ms END,
  last_ms = CASE WHEN conv_conversations.last_ms IS NULL
                   OR excluded.last_ms > conv_conversations.last_ms
                 THEN excluded.last_ms ELSE conv_conversations.last_ms END
"""
_TOUCH_TURN = """
UPDATE conv_turns SET
  started_ms = CASE WHEN started_ms IS NULL OR ? < started_ms THEN ? ELSE started_ms END,
  started_day = (CASE WHEN started_ms IS NULL OR ? < started_ms THEN ? ELSE started_ms END)
                / 86400000,
  ended_ms = CASE WHEN ended_ms IS NULL OR ? > ended_ms THEN ? ELSE ended_ms END
WHERE conversation_id = ? AND turn_key = ?
"""
_UPSERT_PART = """
INSERT INTO conv_parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (conversation_id, source, part_key) DO UPDATE SET
  turn_key = excluded.turn_key, role = excluded.role, at_ms = excluded.at_ms,
  seq = excluded.seq, has_text = excluded.has_text, event_id = excluded.event_id,
  text_field = excluded.text_field
"""
_UPSERT_TOOL = """
INSERT INTO conv_tools VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (conversation_id, tool_key) DO UPDATE SET
  name = COALESCE(excluded.name, conv_tools.name),
  duration_ms = COALESCE(excluded.duration_ms, conv_tools.duration_ms),
  ok = COALESCE(excluded.ok, conv_tools.ok),
  at_ms = COALESCE(conv_tools.at_ms, excluded.at_ms)
"""
_UPSERT_TOKENS = """
INSERT INTO conv_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (conversation_id, token_key) DO UPDATE SET
  turn_key = excluded.turn_key, kind = excluded.kind,
  input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
  cache_read_tokens = excluded.cache_read_tokens,
  cache_write_tokens = excluded.cache_write_tokens
"""


_SET_TOKENS = """
UPDATE conv_turns SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?,
  cache_write_tokens = ?, token_source = ?
WHERE conversation_id = ? AND turn_key = ?
"""


class _ConvTurns:
    """One conversation's turns during a batch: ``rows[key] = [gen, ordinal, tx, started]``."""

    __slots__ = ("by_gen", "by_ordinal", "by_tx", "max_ordinal", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}
        self.by_gen: dict[str, str] = {}
        self.by_tx: dict[int, str] = {}
        self.by_ordinal: dict[int, str] = {}
        self.max_ordinal = -1

    def add(self, key: str, gen: str | None, ordinal: int, tx: int | None, started: Any) -> None:
        self.rows[key] = [gen, ordinal, tx, started]
        if gen is not None:
            self.by_gen[gen] = key
        if tx is not None:
            self.by_tx[int(tx)] = key
        self.by_ordinal[ordinal] = key
        self.max_ordinal = max(self.max_ordinal, ordinal)

    def unclaimed(self) -> str | None:
        """The earliest turn no generation id has claimed."""
        free = [(r[1], k) for k, r in self.rows.items() if r[0] is None]
        return min(free)[1] if free else None


def relevant(event_type: str, hook_type: str | None, trace_type: str | None) -> bool:
    """Whether an event feeds the conversation tables."""
    if hook_type == "CursorHook":
        return True
    return event_type == "database_trace" and trace_type in INDEXED_TRACE_TYPES


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class ConversationIndexer:
    """Applies stored events to the conversation tables on one connection (in its transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._reset()

    def _reset(self) -> None:
        """What one batch accumulates and writes at its end with one statement per kind."""
        self._convs: dict[str, list[Any]] = {}
        self._sources: set[tuple[str, str, str]] = set()
        self._touched: dict[tuple[str, str], list[int]] = {}
        self._parts: list[tuple[Any, ...]] = []
        self._tools: list[tuple[Any, ...]] = []
        self._token_rows: list[tuple[Any, ...]] = []
        self._recount_turns: set[tuple[str, str]] = set()
        self._models: list[tuple[str, str, str, bool]] = []
        self._conv_turns: dict[str, _ConvTurns] = {}
        self._new_turns: list[tuple[str, str]] = []
        self._adopted: set[tuple[str, str]] = set()
        self._db_users: dict[str, list[int]] = {}

    def apply(self, events: Iterable[Any]) -> int:
        """Apply every relevant event (``StoredEvent``-like) that the events table holds (the
        store drops a copy of a trace another source already stored); returns how many."""
        wanted = [ev for ev in events if relevant(ev.event_type, ev.hook_type, ev.trace_type)]
        if not wanted:
            return 0
        held = self._held({str(ev.event_id) for ev in wanted})
        self._reset()
        try:
            n = self._apply(ev for ev in wanted if str(ev.event_id) in held)
            self._flush()
        finally:
            self._reset()
        return n

    def _held(self, ids: set[str]) -> set[str]:
        held: set[str] = set()
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT event_id FROM events WHERE event_id IN ({marks})"
            held.update(r[0] for r in self.conn.execute(sql, chunk))
        return held

    def _apply(self, events: Iterable[Any]) -> int:
        n = 0
        for ev in events:
            if not relevant(ev.event_type, ev.hook_type, ev.trace_type):
                continue
            if ev.hook_type == "CursorHook":
                self._hook(ev)
            elif ev.trace_type == "message":
                self._message(ev)
            elif ev.trace_type == "composer":
                self._composer(ev)
            else:
                self._transcript(ev)
            n += 1
        return n

    # ----------------------------------------------------------------- rows
    def _conversation(
        self,
        cid: str,
        at_ms: int | None,
        workspace_hash: str | None = None,
        workspace_path: str | None = None,
        title: str | None = None,
        parent: str | None = None,
        first_ms: int | None = None,
    ) -> None:
        first = first_ms if first_ms is not None else at_ms
        row = self._convs.get(cid)
        if row is None:
            self._convs[cid] = [workspace_hash, workspace_path, title, parent, first, at_ms]
            return
        for i, value in ((0, workspace_hash), (1, workspace_path), (3, parent)):
            if row[i] is None:
                row[i] = value
        if title is not None:
            row[2] = title
        if first is not None and (row[4] is None or first < row[4]):
            row[4] = first
        if at_ms is not None and (row[5] is None or at_ms > row[5]):
            row[5] = at_ms

    def _flush(self) -> None:
        c = self.conn
        new = set(self._new_turns)
        if self._new_turns:
            rows = []
            for cid, key in self._new_turns:
                gen, ordinal, tx, started = self._conv_turns[cid].rows[key]
                day = None if started is None else int(started) // 86_400_000
                rows.append((cid, key, gen, ordinal, tx, started, day, started))
            c.executemany(
                "INSERT INTO conv_turns (conversation_id, turn_key, generation_id, ordinal,"
                " tx_ordinal, started_ms, started_day, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        adopted = [
            (*self._conv_turns[cid].rows[key][0:3:2], cid, key)
            for cid, key in self._adopted
            if (cid, key) not in new
        ]
        if adopted:
            c.executemany(
                "UPDATE conv_turns SET generation_id = ?, tx_ordinal = ?"
                " WHERE conversation_id = ? AND turn_key = ?",
                adopted,
            )
        if self._convs:
            c.executemany(_UPSERT_CONVERSATION, [(cid, *r) for cid, r in self._convs.items()])
        if self._touched:
            c.executemany(
                _TOUCH_TURN,
                [
                    (lo, lo, lo, lo, hi, hi, cid, key)
                    for (cid, key), (lo, hi) in self._touched.items()
                ],
            )
        if self._parts:
            c.executemany(_UPSERT_PART, self._parts)
        if self._tools:
            c.executemany(_UPSERT_TOOL, self._tools)
        if self._token_rows:
            c.executemany(_UPSERT_TOKENS, self._token_rows)
            c.executemany(_SET_TOKENS, self._recounted())
        if self._models:
            sql = "UPDATE conv_turns SET model = ? WHERE conversation_id = ? AND turn_key = ?"
            c.executemany(
                sql + " AND (? OR model IS NULL)",
                [(model, cid, key, int(override)) for model, cid, key, override in self._models],
            )
        if self._sources:
            c.executemany(
                "INSERT INTO conv_sources VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                sorted(self._sources),
            )

    def _source(self, cid: str, turn_key: str, source: str) -> None:
        self._sources.add((cid, turn_key, source))

    def _turns(self, cid: str) -> _ConvTurns:
        """The conversation's turns, loaded once per batch (one query), then kept in memory."""
        turns = self._conv_turns.get(cid)
        if turns is None:
            turns = _ConvTurns()
            for key, gen, ordinal, tx, started in self.conn.execute(
                "SELECT turn_key, generation_id, ordinal, tx_ordinal, started_ms FROM conv_turns"
                " WHERE conversation_id = ?",
                (cid,),
            ):
                turns.add(key, gen, int(ordinal), tx, started)
            self._conv_turns[cid] = turns
        return turns

    def _new_turn(
        self, cid: str, key: str, gen: str | None, at_ms: int | None, tx: int | None = None
    ) -> str:
        turns = self._turns(cid)
        turns.add(key, gen, turns.max_ordinal + 1, tx, at_ms)
        self._new_turns.append((cid, key))
        return key

    def turn_by_generation(self, cid: str, gen: str, at_ms: int | None) -> str:
        """The turn of ``gen``: found, or adopted from a turn no generation id claimed yet (a
        transcript's, seen first), or new."""
        turns = self._turns(cid)
        key = turns.by_gen.get(gen)
        if key is None:
            free = turns.unclaimed()
            row = turns.rows[free] if free is not None else None
            if row is not None and (
                at_ms is None or row[3] is None or abs(int(row[3]) - at_ms) <= ADOPT_WINDOW_MS
            ):
                key = free
                assert key is not None
                row[0] = gen
                turns.by_gen[gen] = key
                self._adopted.add((cid, key))
            else:
                key = self._new_turn(cid, gen, gen, at_ms)
        self._touch_turn(cid, key, at_ms)
        return key

    def turn_by_position(self, cid: str, tx_ordinal: int, at_ms: int | None) -> str:
        """The transcript's ``tx_ordinal``-th turn: found, or the turn at that position not yet
        seen by the transcript, or new."""
        turns = self._turns(cid)
        key = turns.by_tx.get(tx_ordinal)
        if key is None:
            at = turns.by_ordinal.get(tx_ordinal)
            if at is not None and turns.rows[at][2] is None:
                key = at
                turns.rows[at][2] = tx_ordinal
                turns.by_tx[tx_ordinal] = at
                self._adopted.add((cid, at))
            else:
                key = self._new_turn(cid, f"transcript:{tx_ordinal}", None, at_ms, tx_ordinal)
        self._touch_turn(cid, key, at_ms)
        return key

    def _touch_turn(self, cid: str, key: str, at_ms: int | None) -> None:
        if at_ms is None:
            return
        span = self._touched.get((cid, key))
        if span is None:
            self._touched[(cid, key)] = [at_ms, at_ms]
        else:
            span[0] = min(span[0], at_ms)
            span[1] = max(span[1], at_ms)

    def _model(self, cid: str, key: str, model: str | None, override: bool) -> None:
        if model:
            self._models.append((model, cid, key, override))

    def _part(
        self,
        cid: str,
        source: str,
        part_key: str,
        turn_key: str | None,
        role: str,
        at_ms: int | None,
        seq: int | None,
        ev: Any,
        text_field: str,
    ) -> None:
        has_text = int(bool(_str(ev.payload.get(text_field))))
        self._parts.append(
            (cid, source, part_key, turn_key, role, at_ms, seq, has_text, str(ev.event_id),
             text_field)
        )  # fmt: skip

    def _tokens(
        self, cid: str, key: str, token_key: str, kind: str, counts: dict[str, Any]
    ) -> None:
        values = [_int(counts.get(f)) for f in TOKEN_FIELDS]
        if all(v is None for v in values):
            return
        self._token_rows.append((cid, token_key, key, kind, *values))
        self._recount_turns.add((cid, key))

    def _recounted(self) -> list[tuple[Any, ...]]:
        """Each changed turn's four counts from its best token source (summed within it)."""
        by_turn: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        cids = sorted({cid for cid, _ in self._recount_turns})
        for start in range(0, len(cids), 500):
            chunk = cids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for cid, key, kind, *counts in self.conn.execute(
                "SELECT conversation_id, turn_key, kind, input_tokens, output_tokens,"
                " cache_read_tokens, cache_write_tokens FROM conv_tokens"
                f" WHERE conversation_id IN ({marks})",
                chunk,
            ):
                if (cid, key) in self._recount_turns:
                    by_turn.setdefault((cid, key), []).append((kind, *counts))
        out = []
        for (cid, key), rows in by_turn.items():
            kinds = {r[0] for r in rows}
            best = next((k for k in TOKEN_PRIORITY if k in kinds), None)
            totals: list[int | None] = [None, None, None, None]
            for r in rows:
                if r[0] == best:
                    for i, v in enumerate(r[1:]):
                        if v is not None:
                            totals[i] = (totals[i] or 0) + int(v)
            out.append((*totals, best, cid, key))
        return out

    def _tool(
        self,
        cid: str,
        tool_key: str,
        turn_key: str,
        name: str | None,
        duration_ms: int | None,
        ok: bool | None,
        at_ms: int | None,
    ) -> None:
        self._tools.append(
            (cid, tool_key, turn_key, name, duration_ms, None if ok is None else int(ok), at_ms)
        )

    # ----------------------------------------------------------------- database traces
    def _message(self, ev: Any) -> None:
        p = ev.payload
        cid = _str(p.get("composer_id"))
        if cid is None:
            return  # agentKv blobs name no conversation
        at = ev.timestamp_ms
        meta = ev.metadata
        self._conversation(cid, at, ev.workspace_hash, _str(meta.get("workspace_path")))
        self._source(cid, "", DATABASE)
        bubble = _str(p.get("bubble_id")) or str(ev.item_key)
        request_id = _str(p.get("request_id"))
        role = str(p.get("role") or "user")
        position = _int(p.get("position"))
        key: str | None
        if role == "assistant" and request_id is not None:
            key = self.turn_by_generation(cid, request_id, at)
        elif position is not None:
            # Older eras (inline conversations, the chat panel): no request ids, but every
            # bubble's place in the conversation. A user bubble starts the next turn.
            key = self._turn_by_db_position(cid, role, position, at)
        else:
            key = None
        if key is None:
            # No id and no place (a user bubble of the global database): attached, when the
            # conversation is read, to the turn that follows it (conversations.py).
            self._part(cid, DATABASE, bubble, None, role, at, position, ev, "text")
            return
        self._source(cid, key, DATABASE)
        self._part(cid, DATABASE, bubble, key, role, at, position, ev, "text")
        if role != "assistant":
            return
        self._model(cid, key, _str(p.get("model")), override=False)
        if p.get("tokens_reported"):
            self._tokens(cid, key, f"db:{bubble}", DATABASE, p)
        for i, call in enumerate(p.get("tool_calls") or []):
            if not isinstance(call, dict):
                continue
            status = _str(call.get("status"))
            ok = None if status is None else status == "completed"
            tool_key = _str(call.get("tool_call_id")) or f"db:{bubble}:{i}"
            self._tool(cid, tool_key, key, _str(call.get("name")), None, ok, at)

    def _turn_by_db_position(
        self, cid: str, role: str, position: int, at: int | None
    ) -> str | None:
        """The turn of a bubble known only by its place: the k-th user bubble starts turn k
        (the same numbering as a transcript's), an assistant bubble belongs to the last user
        bubble before it."""
        users = self._db_users.get(cid)
        if users is None:
            users = sorted(
                int(r[0])
                for r in self.conn.execute(
                    "SELECT seq FROM conv_parts WHERE conversation_id = ? AND source = ?"
                    " AND role = 'user' AND seq IS NOT NULL AND turn_key IS NOT NULL",
                    (cid, DATABASE),
                )
            )
            self._db_users[cid] = users
        k = bisect.bisect_left(users, position)
        if role == "user":
            if k == len(users) or users[k] != position:
                users.insert(k, position)
        else:
            k -= 1
            if k < 0:
                return None  # an answer before any question: kept loose
        return self.turn_by_position(cid, k, at)

    def _composer(self, ev: Any) -> None:
        p = ev.payload
        cid = _str(p.get("composer_id"))
        if cid is None:
            return
        at = _int(p.get("last_updated_at_ms")) or ev.timestamp_ms
        self._conversation(
            cid, at, ev.workspace_hash, _str(ev.metadata.get("workspace_path")),
            title=_str(p.get("name")), first_ms=_int(p.get("created_at_ms")),
        )  # fmt: skip
        self._source(cid, "", DATABASE)

    # ----------------------------------------------------------------- transcripts
    def _transcript(self, ev: Any) -> None:
        p = ev.payload
        cid = _str(p.get("conversation_id"))
        tx = _int(p.get("turn_index"))
        if cid is None:
            return
        at = ev.timestamp_ms
        ws = None if ev.workspace_hash == UNKNOWN_WORKSPACE else ev.workspace_hash
        self._conversation(
            cid, at, ws, _str(ev.metadata.get("workspace_path")),
            parent=_str(p.get("parent_conversation_id")),
        )  # fmt: skip
        self._source(cid, "", TRANSCRIPT)
        if tx is None or tx < 0:
            return  # lines before the first user message
        key = self.turn_by_position(cid, tx, at)
        self._source(cid, key, TRANSCRIPT)
        role = _str(p.get("role"))
        if role in ("user", "assistant"):
            self._part(cid, TRANSCRIPT, str(ev.item_key), key, role, at, _int(p.get("line")),
                       ev, "text")  # fmt: skip
        for i, tool in enumerate(p.get("tool_uses") or []):
            if isinstance(tool, dict):
                tool_key = _str(tool.get("id")) or f"tx:{ev.item_key}:{i}"
                self._tool(cid, tool_key, key, _str(tool.get("name")), None, None, at)

    # ----------------------------------------------------------------- hooks
    def _hook(self, ev: Any) -> None:
        p, meta = ev.payload, ev.metadata
        cid = _str(meta.get("conversation_id")) or _str(p.get("conversation_id"))
        if cid is None:
            return
        at = ev.timestamp_ms
        name = ev.event_type
        roots = p.get("workspace_roots")
        root = _str(roots[0]) if isinstance(roots, list) and roots else None
        self._conversation(cid, at, ev.workspace_hash, root)
        self._source(cid, "", HOOK)
        if name == "subagentStart" or name == "subagentStop":
            sub = _str(p.get("subagent_id"))
            if sub is not None:
                self._conversation(sub, at, ev.workspace_hash, root, parent=cid)
        gen = _str(meta.get("generation_id")) or _str(p.get("generation_id"))
        if gen is None:
            return  # sessionStart / sessionEnd: the conversation only
        key = self.turn_by_generation(cid, gen, at)
        self._source(cid, key, HOOK)
        model = _str(p.get("model"))
        if model and model != "default":  # "default" is Auto: the database may know better
            self._model(cid, key, model, override=True)
        event_key = str(ev.event_id)
        if name == "beforeSubmitPrompt":
            self._part(cid, HOOK, f"prompt:{gen}", key, "user", at, None, ev, "prompt")
        elif name == "afterAgentResponse":
            self._part(cid, HOOK, event_key, key, "assistant", at, None, ev, "text")
            self._tokens(cid, key, event_key, "afterAgentResponse", p)
        elif name == "stop":
            self._tokens(cid, key, event_key, "stop", p)
        elif name in ("preToolUse", "postToolUse", "postToolUseFailure"):
            tool_key = _str(p.get("tool_use_id")) or f"hook:{event_key}"
            ok = None if name == "preToolUse" else name == "postToolUse"
            self._tool(cid, tool_key, key, _str(p.get("tool_name")), _int(p.get("duration")),
                       ok, at)  # fmt: skip


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
