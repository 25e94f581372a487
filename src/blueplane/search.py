"""Full-text search over the stored traces' text (the index ``trace_text``, derived.py).

People type words, not query syntax: each word of the query is quoted (so ``"``, ``*``, ``-``,
``&`` or ``AND`` in it mean nothing special), the last one is matched as a prefix (search as
you type), and all words must match. The index is the dialect's
(``store_schema.Dialect.search_table``: FTS5 on SQLite, ``tsvector`` on PostgreSQL); the
queries here run on either store.
"""

from __future__ import annotations

import re
from typing import Any

from blueplane.store_schema import SEARCH_TABLE, SQLITE

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 16


def _words(text: str) -> list[str]:
    return _WORD.findall(text)[:MAX_WORDS]


def fts_query(text: str) -> str | None:
    """The FTS5 query for what a person typed; None when it has no word to look for."""
    # Whole words, and the last one as a prefix (what is being typed): a prefix of every word
    # would merge the doclists of all the terms each one starts (slow on common words).
    words = _words(text)
    return SQLITE.search_query(words) if words else None


def _match(store: Any, query: str) -> tuple[str, str] | None:
    """(condition, its parameter) on the store's index, None when nothing can match."""
    words = _words(query)
    if not words or not store.has_table(SEARCH_TABLE):
        return None
    dialect = store.dialect
    return dialect.search_match(), dialect.search_query(words)


def search_conversation_ids(store: Any, query: str, limit: int = 50) -> list[str]:
    """Conversations whose text matches every word of ``query``, most recently matched first.

    SQLite: matches are read newest first and the scan stops at ``limit`` distinct
    conversations, so a common word costs no more than a rare one (no GROUP BY over every
    match). PostgreSQL (whose driver fetches a query's rows at once): grouped on the server."""
    match = _match(store, query)
    if match is None:
        return []
    cond, arg = match
    if store.dialect is not SQLITE:
        rows = store.conn.execute(
            f"SELECT conversation_id FROM {SEARCH_TABLE} WHERE {cond}"
            " AND conversation_id IS NOT NULL GROUP BY conversation_id"
            " ORDER BY max(rowid) DESC LIMIT ?",
            (arg, limit),
        ).fetchall()
        return [r[0] for r in rows]
    cur = store.conn.execute(
        f"SELECT conversation_id FROM {SEARCH_TABLE} WHERE {cond}"
        " AND conversation_id IS NOT NULL ORDER BY rowid DESC",
        (arg,),
    )
    found: dict[str, None] = {}
    for (cid,) in cur:
        found.setdefault(cid, None)
        if len(found) >= limit:
            break
    return list(found)


def search_event_ids(store: Any, query: str, limit: int = 50) -> list[str]:
    """Stored events whose text matches every word of ``query``, newest first."""
    match = _match(store, query)
    if match is None:
        return []
    rows = store.conn.execute(
        f"SELECT event_id FROM {SEARCH_TABLE} WHERE {match[0]} ORDER BY rowid DESC LIMIT ?",
        (match[1], limit),
    ).fetchall()
    return [r[0] for r in rows]
