"""Conversations and their turns, reconciled across the database, hooks and transcripts.

The reading side of ``conversation_index``: the store's writer keeps the ``conv_*`` tables
current in each batch's transaction, so listing conversations with their token totals or
reading one conversation is a few indexed queries, never a scan of the traces. This module's
dataclasses and the two functions are the interface the page, the exports (issue 12) and the
PostgreSQL store (issue 13) use; ``to_json`` gives the objects of DESIGN §6.

Content comes from whichever source has it, best first: the hook (Cursor's own prompt and final
answer), the transcript, the database. Token counts come from hooks (``afterAgentResponse``,
else ``stop``), else from the database's bubbles; ``None`` where no source knows them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from blueplane.conversation_index import DATABASE, HOOK, TRANSCRIPT
from blueplane.events import iso_from_ms, normalise_workspace_path, workspace_hash

SOURCE_ORDER = (DATABASE, HOOK, TRANSCRIPT)
CONTENT_ORDER = (HOOK, TRANSCRIPT, DATABASE)
TITLE_FALLBACK_CHARS = 80
_HASH = re.compile(r"[0-9a-f]{16}")


@dataclass(slots=True)
class ToolCall:
    name: str
    duration_ms: int | None
    ok: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "duration_ms": self.duration_ms, "ok": self.ok}


@dataclass(slots=True)
class Turn:
    generation_id: str | None
    prompt: str | None
    response: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    started_at: str | None
    ended_at: str | None
    duration_ms: int | None
    tools: list[ToolCall] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation_id": self.generation_id, "prompt": self.prompt,
            "response": self.response, "model": self.model,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens, "started_at": self.started_at,
            "ended_at": self.ended_at, "duration_ms": self.duration_ms,
            "tools": [t.to_json() for t in self.tools], "sources": list(self.sources),
        }  # fmt: skip


@dataclass(slots=True)
class Conversation:
    conversation_id: str
    workspace_hash: str | None
    workspace_path: str | None
    title: str | None
    models: list[str]
    turns: int
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    first_at: str | None
    last_at: str | None
    sources: list[str]

    def to_json(self) -> dict[str, Any]:
        """The DESIGN §6 object of ``blueplane conversations --json``."""
        return {
            "conversation_id": self.conversation_id, "workspace_hash": self.workspace_hash,
            "workspace_path": self.workspace_path, "title": self.title,
            "models": list(self.models), "turns": self.turns,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens, "first_at": self.first_at,
            "last_at": self.last_at, "sources": list(self.sources),
        }  # fmt: skip


@dataclass(slots=True)
class DayTokens:
    """Token totals of the turns that started on one UTC day (for the page's chart)."""

    day: str
    turns: int
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_from_ms(int(ms))


def _has_tables(store: Any) -> bool:
    row = store.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'conv_turns'"
    ).fetchone()
    return row is not None


def workspace_filter(workspace: str) -> str:
    """A workspace hash as given, or the hash of a folder path."""
    if _HASH.fullmatch(workspace):
        return workspace
    return workspace_hash(normalise_workspace_path(workspace))


def _sorted_sources(found: set[str]) -> list[str]:
    return [s for s in SOURCE_ORDER if s in found] + sorted(found - set(SOURCE_ORDER))


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def list_conversations(
    store: Any,
    *,
    workspace: str | None = None,
    since_ms: int | None = None,
    limit: int = 50,
    conversation_ids: Sequence[str] | None = None,
) -> list[Conversation]:
    """The most recently active conversations first, with their totals."""
    if not _has_tables(store):
        return []
    if conversation_ids is not None and not conversation_ids:
        return []
    where: list[str] = []
    args: list[Any] = []
    if workspace:
        where.append("workspace_hash = ?")
        args.append(workspace_filter(workspace))
    if since_ms is not None:
        where.append("last_ms >= ?")
        args.append(since_ms)
    if conversation_ids is not None:
        where.append(f"conversation_id IN ({_placeholders(len(conversation_ids))})")
        args.extend(conversation_ids)
    sql = (
        "SELECT conversation_id, workspace_hash, workspace_path, title, first_ms, last_ms"
        " FROM conv_conversations"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY last_ms DESC NULLS LAST LIMIT ?"
    )
    heads = store.conn.execute(sql, (*args, limit)).fetchall()
    return _with_totals(store, heads)


def _with_totals(store: Any, heads: list[Any]) -> list[Conversation]:
    if not heads:
        return []
    ids = [h[0] for h in heads]
    inn = _placeholders(len(ids))
    totals = {
        r[0]: r[1:]
        for r in store.conn.execute(
            "SELECT conversation_id, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
            " SUM(cache_read_tokens), SUM(cache_write_tokens) FROM conv_turns"
            f" WHERE conversation_id IN ({inn}) GROUP BY conversation_id",
            ids,
        )
    }
    models: dict[str, list[str]] = {}
    for cid, model in store.conn.execute(
        "SELECT conversation_id, model FROM conv_turns WHERE model IS NOT NULL AND"
        f" conversation_id IN ({inn}) ORDER BY conversation_id, ordinal",
        ids,
    ):
        seen = models.setdefault(cid, [])
        if model not in seen:
            seen.append(model)
    sources: dict[str, set[str]] = {}
    for cid, source in store.conn.execute(
        "SELECT DISTINCT conversation_id, source FROM conv_sources"
        f" WHERE conversation_id IN ({inn})",
        ids,
    ):
        sources.setdefault(cid, set()).add(source)
    untitled = [h[0] for h in heads if not h[3]]
    fallback = _first_prompts(store, untitled) if untitled else {}
    out = []
    for cid, whash, wpath, title, first_ms, last_ms in heads:
        n, tin, tout, tcr, tcw = totals.get(cid, (0, None, None, None, None))
        out.append(
            Conversation(
                conversation_id=cid, workspace_hash=whash, workspace_path=wpath,
                title=title or fallback.get(cid), models=models.get(cid, []), turns=int(n),
                input_tokens=tin, output_tokens=tout, cache_read_tokens=tcr,
                cache_write_tokens=tcw, first_at=_iso(first_ms), last_at=_iso(last_ms),
                sources=_sorted_sources(sources.get(cid, set())),
            )
        )  # fmt: skip
    return out


def _first_prompts(store: Any, ids: list[str]) -> dict[str, str]:
    """A title for conversations Cursor named nowhere: the start of their first prompt."""
    first: dict[str, tuple[int, str, str]] = {}
    rows = store.conn.execute(
        "SELECT conversation_id, at_ms, event_id, text_field FROM conv_parts WHERE role = 'user'"
        f" AND has_text = 1 AND conversation_id IN ({_placeholders(len(ids))})",
        ids,
    )
    for cid, at_ms, event_id, text_field in rows:
        at = at_ms if at_ms is not None else 2**62
        if cid not in first or at < first[cid][0]:
            first[cid] = (at, event_id, text_field)
    texts = _texts(store, [(e, f) for _, e, f in first.values()])
    out = {}
    for cid, (_, event_id, text_field) in first.items():
        line = " ".join(_strip_markup(texts.get((event_id, text_field)) or "").split())
        if line:
            out[cid] = line[:TITLE_FALLBACK_CHARS]
    return out


def _texts(store: Any, refs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The texts the parts point to, from their events' payloads."""
    out: dict[tuple[str, str], str] = {}
    ids = sorted({e for e, _ in refs})
    payloads: dict[str, Any] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for event_id, payload in store.conn.execute(
            f"SELECT event_id, payload FROM events WHERE event_id IN ({_placeholders(len(chunk))})",
            chunk,
        ):
            try:
                payloads[event_id] = json.loads(payload) if payload else {}
            except json.JSONDecodeError:
                payloads[event_id] = {}
    for event_id, text_field in refs:
        p = payloads.get(event_id)
        value = p.get(text_field) if isinstance(p, dict) else None
        if isinstance(value, str) and value:
            out[(event_id, text_field)] = value
    return out


_TAGGED = re.compile(r"<user_query>\s*(.*?)\s*</user_query>", re.S)
_TIMESTAMP = re.compile(r"<timestamp>.*?</timestamp>", re.S)


def _strip_markup(text: str) -> str:
    """The user's words from a transcript line (``<timestamp>…</timestamp><user_query>…``)."""
    m = _TAGGED.search(text)
    if m:
        return m.group(1)
    if "<timestamp>" in text:
        return _TIMESTAMP.sub("", text).strip()
    return text


def get_conversation(store: Any, conversation_id: str) -> tuple[Conversation, list[Turn]] | None:
    """One conversation and its turns in order; None when the store does not know it."""
    if not _has_tables(store):
        return None
    heads = store.conn.execute(
        "SELECT conversation_id, workspace_hash, workspace_path, title, first_ms, last_ms"
        " FROM conv_conversations WHERE conversation_id = ?",
        (conversation_id,),
    ).fetchall()
    if not heads:
        return None
    conv = _with_totals(store, heads)[0]
    c = store.conn
    turns = c.execute(
        "SELECT turn_key, generation_id, model, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, started_ms, ended_ms FROM conv_turns WHERE conversation_id = ?"
        " ORDER BY ordinal",
        (conversation_id,),
    ).fetchall()
    rows = c.execute(
        "SELECT turn_key, source, role, at_ms, seq, has_text, event_id, text_field"
        " FROM conv_parts WHERE conversation_id = ?",
        (conversation_id,),
    ).fetchall()
    texts = _texts(store, [(r[6], r[7]) for r in rows if r[5]])
    parts: dict[str | None, list[tuple[str, str, int | None, int | None, str | None]]] = {}
    for turn_key, source, role, at_ms, seq, _, event_id, text_field in rows:
        text = texts.get((event_id, text_field))
        parts.setdefault(turn_key, []).append((source, role, at_ms, seq, text))
    tools: dict[str, list[tuple[int | None, ToolCall]]] = {}
    for turn_key, name, duration_ms, ok, at_ms in c.execute(
        "SELECT turn_key, name, duration_ms, ok, at_ms FROM conv_tools WHERE conversation_id = ?",
        (conversation_id,),
    ):
        call = ToolCall(name or "unknown", duration_ms, None if ok is None else bool(ok))
        tools.setdefault(turn_key, []).append((at_ms, call))
    sources: dict[str, set[str]] = {}
    for turn_key, source in c.execute(
        "SELECT turn_key, source FROM conv_sources WHERE conversation_id = ?", (conversation_id,)
    ):
        sources.setdefault(turn_key, set()).add(source)
    loose_prompts, loose_answers = _attach_loose(turns, parts.get(None, []))
    out = []
    for row in turns:
        key, gen, model, tin, tout, tcr, tcw, started, ended = row
        own = parts.get(key, [])
        prompt = _text_of(own, "user") or loose_prompts.get(key)
        calls = [t for _, t in sorted(tools.get(key, []), key=lambda x: x[0] or 0)]
        out.append(
            Turn(
                generation_id=gen, prompt=prompt,
                response=_text_of(own, "assistant") or loose_answers.get(key),
                model=model, input_tokens=tin, output_tokens=tout, cache_read_tokens=tcr,
                cache_write_tokens=tcw, started_at=_iso(started), ended_at=_iso(ended),
                duration_ms=None if started is None or ended is None else int(ended - started),
                tools=calls, sources=_sorted_sources(sources.get(key, set())),
            )
        )  # fmt: skip
    return conv, out


def _text_of(
    parts: list[tuple[str, str, int | None, int | None, str | None]], role: str
) -> str | None:
    """The turn's text in ``role`` from the best source that has some."""
    for source in CONTENT_ORDER:
        texts = [
            (at or 0, seq or 0, text)
            for src, r, at, seq, text in parts
            if src == source and r == role and text
        ]
        if texts:
            texts.sort(key=lambda t: (t[0], t[1]) if source != TRANSCRIPT else (t[1], t[0]))
            joined = "\n\n".join(t[2] for t in texts)
            return _strip_markup(joined) if role == "user" else joined
    return None


def _attach_loose(
    turns: list[Any], loose: list[tuple[str, str, int | None, int | None, str | None]]
) -> tuple[dict[str, str], dict[str, str]]:
    """Database bubbles with neither a request id nor a place in the conversation: a user
    bubble is the prompt of the first turn starting at or after it (the answer follows the
    question), else of the last turn; an assistant bubble belongs to the last turn that
    started at or before it."""
    prompts: dict[str, list[str]] = {}
    answers: dict[str, list[str]] = {}
    timed = sorted((t[7], t[0]) for t in turns if t[7] is not None)
    for _, role, at, _, text in sorted(loose, key=lambda p: (p[2] or 0, p[3] or 0)):
        if not text or not timed:
            continue
        if role == "user":
            key = next((k for start, k in timed if at is None or start >= at), timed[-1][1])
            prompts.setdefault(key, []).append(text)
        elif role == "assistant":
            before = [k for start, k in timed if at is None or start <= at]
            answers.setdefault(before[-1] if before else timed[0][1], []).append(text)
    join = "\n\n".join
    return {k: join(v) for k, v in prompts.items()}, {k: join(v) for k, v in answers.items()}


def token_totals_by_day(
    store: Any, *, since_ms: int | None = None, workspace: str | None = None
) -> list[DayTokens]:
    """Token totals per UTC day of the turns' start, oldest first (one pass over an index).

    ``since_ms`` counts whole days: the day it falls on is included entirely."""
    if not _has_tables(store):
        return []
    where = ["t.started_day IS NOT NULL"]
    args: list[Any] = []
    join = ""
    if since_ms is not None:
        # whole days from the day of since_ms: the per-day index answers alone
        where.append("t.started_day >= ?")
        args.append(since_ms // 86_400_000)
    if workspace:
        join = " JOIN conv_conversations c ON c.conversation_id = t.conversation_id"
        where.append("c.workspace_hash = ?")
        args.append(workspace_filter(workspace))
    rows = store.conn.execute(
        "SELECT t.started_day, COUNT(*), SUM(t.input_tokens), SUM(t.output_tokens),"
        " SUM(t.cache_read_tokens), SUM(t.cache_write_tokens)"
        f" FROM conv_turns t{join} WHERE {' AND '.join(where)}"
        " GROUP BY t.started_day ORDER BY t.started_day",
        args,
    ).fetchall()
    return [
        DayTokens(iso_from_ms(int(d) * 86400000)[:10], int(n), a, b, cr, cw)
        for d, n, a, b, cr, cw in rows
    ]
