"""Full-text search over the stored traces' text (the FTS5 index ``trace_text``, derived.py).

People type words, not FTS5 syntax: each word of the query is quoted (so ``"``, ``*``, ``-``
or ``AND`` in it mean nothing special), the last one is matched as a prefix (search as you
type), and all words must match.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Protocol

_WORD = re.compile(r"\w+", re.UNICODE)


class _HasConn(Protocol):
    conn: sqlite3.Connection


def fts_query(text: str) -> str | None:
    """The FTS5 query for what a person typed; None when it has no word to look for."""
    words = _WORD.findall(text)
    if not words:
        return None
    # Whole words, and the last one as a prefix (what is being typed): a prefix of every word
    # would merge the doclists of all the terms each one starts (slow on common words).
    words = words[:16]
    return " ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])


def search_conversation_ids(store: _HasConn, query: str, limit: int = 50) -> list[str]:
    """Conversations whose text matches every word of ``query``, most recently matched first.

    Matches are read newest first and the scan stops at ``limit`` distinct conversations, so a
    common word costs no more than a rare one (no GROUP BY over every match)."""
    match = fts_query(query)
    if match is None:
        return []
    cur = store.conn.execute(
        "SELECT conversation_id FROM trace_text WHERE trace_text MATCH ?"
        " AND conversation_id IS NOT NULL ORDER BY rowid DESC",
        (match,),
    )
    found: dict[str, None] = {}
    for (cid,) in cur:
        found.setdefault(cid, None)
        if len(found) >= limit:
            break
    return list(found)


def search_event_ids(store: _HasConn, query: str, limit: int = 50) -> list[str]:
    """Stored events whose text matches every word of ``query``, newest first."""
    match = fts_query(query)
    if match is None:
        return []
    rows = store.conn.execute(
        "SELECT event_id FROM trace_text WHERE trace_text MATCH ? ORDER BY rowid DESC LIMIT ?",
        (match, limit),
    ).fetchall()
    return [r[0] for r in rows]
