"""The FTS5 index and the hourly activity, kept by the store's writer in the batch's transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from blueplane.search import fts_query, search_conversation_ids, search_event_ids
from blueplane.store import TraceStore
from blueplane.ui import queries
from blueplane.ui.sample import _event, fill, generate

END_MS = 1_795_000_000_000


def answer(n: int, conv: str, text: str, tin: int | None, tout: int | None, revision: int = 0):
    payload = {
        "role": "assistant", "bubble_id": f"{conv}-a", "composer_id": conv, "text": text,
        "model": "gpt-5", "input_tokens": tin, "output_tokens": tout,
    }  # fmt: skip
    ws = "ws00000000000001"
    return _event(n, "message", ws, "s1", f"{conv}-a", f"{conv}-g", END_MS, payload, revision)


def totals(store: TraceStore) -> tuple[int, int, int, int]:
    """The hourly table's sums, checked against the daily table's (the same events)."""
    sums = "SUM(traces), SUM(turns), SUM(input_tokens), SUM(output_tokens)"
    hourly = store.conn.execute(f"SELECT {sums} FROM activity_hourly").fetchone()
    daily = store.conn.execute(f"SELECT {sums} FROM activity_daily").fetchone()
    assert hourly == daily
    return tuple(int(v or 0) for v in hourly)  # type: ignore[return-value]


def test_search_finds_conversations_by_any_word_prefix(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch([
        answer(1, "conv-a", "The flaky checkout test was a timezone problem", 10, 5),
        answer(2, "conv-b", "Rename the helper; résumé parsing now strips accents", 10, 5),
        answer(3, "conv-c", 'Quotes " and * and AND OR NOT are just text', 10, 5),
    ], 0)  # fmt: skip
    assert search_conversation_ids(store, "checkout timez") == ["conv-a"]
    assert search_conversation_ids(store, "CHECKOUT") == ["conv-a"]
    assert search_conversation_ids(store, "resume") == ["conv-b"]  # diacritics folded
    assert search_conversation_ids(store, 'and " OR') == ["conv-c"]  # syntax is just words
    assert search_conversation_ids(store, "checkout rename") == []  # all words must match
    assert search_conversation_ids(store, "  ***  ") == [] and fts_query("--") is None
    assert search_event_ids(store, "helper") == ["ev-2-conv-b-a-0"]
    store.close()


def test_revisions_add_token_differences_and_duplicates_count_nothing(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch([answer(1, "c", "draft", None, None)], 0)
    assert totals(store) == (1, 1, 0, 0)
    store.write_batch([answer(1, "c", "settled", 1200, 300, revision=1)], 0)
    store.write_batch([answer(1, "c", "settled", 1250, 310, revision=2)], 0)
    assert totals(store) == (3, 1, 1250, 310)  # three stored revisions, one turn
    r = store.write_batch([answer(1, "c", "settled", 1250, 310, revision=2)], 0)
    assert r.duplicates == 1 and totals(store) == (3, 1, 1250, 310)
    store.close()


def test_a_failed_batch_leaves_no_index_or_count_behind(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch([answer(1, "c", "stored first", 5, 5)], 0)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    big = [answer(i, f"d{i}", "never stored " + "word " * 2000, 5, 5) for i in range(2, 40)]
    try:
        store.write_batch(big, 0)
    except sqlite3.OperationalError as exc:
        assert "full" in str(exc)
    else:
        raise AssertionError("the batch should have failed")
    assert totals(store) == (1, 1, 5, 5)
    assert search_conversation_ids(store, "never") == []
    assert search_conversation_ids(store, "first") == ["c"]
    # The rollback emptied the stage too: the retried batch is counted once, nothing else.
    for temporary in ("derived_stage", "derived_hours"):
        assert store.conn.execute(f"SELECT count(*) FROM {temporary}").fetchone()[0] == 0
    store.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    store.write_batch(big, 0)
    assert totals(store) == (39, 39, 5 * 39, 5 * 39)
    assert sorted(search_conversation_ids(store, "never")) == sorted(f"d{i}" for i in range(2, 40))
    store.close()


def test_an_older_store_is_indexed_when_the_writer_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = TraceStore(path)
    batches, expected = generate(300, workspaces=2, turns=3, end_ms=END_MS)
    fill(store, batches)
    # What a store written before this version looks like: no derived tables.
    store.conn.executescript(
        "DROP TABLE trace_text; DROP TABLE activity_hourly; DROP TABLE activity_daily;"
        " DELETE FROM store_meta WHERE key = 'derived_version';"
    )
    store.close()
    with queries.StoreReader(path).connect() as conn:  # the page still works, from events
        assert queries.overview(conn, None).totals.traces == expected.traces
    store = TraceStore(path)
    assert totals(store) == (expected.traces, expected.turns, expected.input_tokens,
                             expected.output_tokens)  # fmt: skip
    conv, title = next(iter(expected.conversations.items()))
    assert conv in search_conversation_ids(store, title, limit=500)
    store.close()


def test_overview_totals_per_workspace_and_model(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    batches, expected = generate(500, workspaces=3, turns=4, end_ms=END_MS, span_days=10)
    fill(store, batches)
    store.close()
    with queries.StoreReader(tmp_path / "t.db").connect() as conn:
        ov = queries.overview(conn, None, now_ms=END_MS)
        assert not ov.empty
        assert (ov.totals.traces, ov.totals.turns) == (expected.traces, expected.turns)
        assert ov.totals.input_tokens == expected.input_tokens
        assert sum(d["traces"] for d in ov.daily) == expected.traces
        assert {m["model"]: m["turns"] for m in ov.models} == expected.per_model_turns
        assert {w["workspace_hash"]: w["traces"] for w in ov.workspaces} == (
            expected.per_workspace_traces
        )
        ws, n = next(iter(expected.per_workspace_traces.items()))
        assert queries.overview(conn, ws).totals.traces == n
        assert len(ov.hourly) == 48
        feed = queries.feed(conn, None, 5)
        assert len(feed) == 5 and feed[0]["rowid"] > feed[-1]["rowid"]
        assert all(f["workspace_hash"] == ws for f in queries.feed(conn, ws, 5))
    with queries.StoreReader(tmp_path / "none.db").connect() as conn:
        assert queries.overview(conn, None).empty and queries.feed(conn, None) == []


def test_one_batch_over_many_hours_and_days_is_counted_in_each(tmp_path: Path) -> None:
    """A batch's activity is summed by hour once, then added to both tables: each hour and
    each day holds what a count over its stored traces gives."""
    store = TraceStore(tmp_path / "t.db")
    batches, expected = generate(600, workspaces=3, turns=3, end_ms=END_MS, span_days=4)
    events = [ev for batch in batches for ev in batch]
    half = len(events) // 2
    store.write_batch(events[:half], 0)
    store.write_batch(events[half:], 0)  # adds to the hours and days the first one made
    assert totals(store) == (expected.traces, expected.turns, expected.input_tokens,
                             expected.output_tokens)  # fmt: skip
    for table, col, bucket in (("activity_hourly", "hour_ms", 3_600_000),
                               ("activity_daily", "day_ms", 86_400_000)):  # fmt: skip
        counted = store.conn.execute(
            f"SELECT (coalesce(timestamp_ms, received_at_ms) / {bucket}) * {bucket} AS b,"
            " coalesce(workspace_hash, ''), coalesce(trace_type, ''), count(*) FROM events"
            " WHERE event_type = 'database_trace' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        kept = store.conn.execute(
            f"SELECT {col}, workspace_hash, trace_type, SUM(traces) FROM {table}"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        assert kept == counted and len({r[0] for r in kept}) > 3
    assert store.conn.execute("SELECT count(*) FROM derived_hours").fetchone()[0] == 0
    store.close()
