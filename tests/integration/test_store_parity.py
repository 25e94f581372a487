"""The same events give the same answers on both stores (SQLite file, real PostgreSQL).

Trace sources and the NOT_FIRST rule, ``compare --json``, reconciled conversations
(``conversations`` / ``show``, a turn seen by three sources), several writers at once, and the
one-time indexing of a store written before the conversation tables existed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from blueplane import conversations
from blueplane.cursor.transcripts import FileState, parse_lines
from blueplane.events import MessagePayload, TraceEvent, TraceMetadata, iso_from_ms
from blueplane.fast_path.consumer import parse_entry
from blueplane.hooks.emit import build_fields
from blueplane.store import StoredEvent, TraceStore
from blueplane.store_schema import CONVERSATION_TABLES, SCHEMA_VERSION
from blueplane.stores import open_store
from tests.conftest import BlueplaneEnv
from tests.unit.test_trace_sources import WS, enc, ours, theirs

pytestmark = pytest.mark.integration

WS_PATH = "/home/me/p"
T0 = 1_766_691_308_000


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store' / 'telemetry.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def both_urls(tmp_path: Path, pg_url: str) -> dict[str, str]:
    return {"sqlite": f"sqlite://{tmp_path / 'store' / 'telemetry.db'}", "postgres": pg_url}


# ----------------------------------------------------------------------------- events
def _db_trace(stream: str, event_id: str, payload: MessagePayload, at_ms: int) -> StoredEvent:
    ev = TraceEvent(
        event_id=event_id, session_id="s", external_session_id="s", timestamp=iso_from_ms(at_ms),
        metadata=TraceMetadata(workspace_hash="w", workspace_path=WS_PATH),
        payload=payload.to_json_dict(),
    )  # fmt: skip
    return parse_entry(stream, ev.to_fields())


def three_sources(k: int, cid: str | None = None) -> dict[str, list[StoredEvent]]:
    """One turn of conversation ``cid`` as the database, the hooks and the transcript report
    it (unique ids per ``k``)."""
    cid = cid or f"conv-{k}"
    gen = f"gen-{k}"
    t0 = T0 + k * 60_000
    user = MessagePayload(generation_id=f"u-{k}", item_id=f"u-{k}", role="user",
                          composer_id=cid, bubble_id=f"u-{k}", text="fix the bug",
                          text_length=11)  # fmt: skip
    answer = MessagePayload(
        generation_id=gen, item_id=f"a-{k}", role="assistant", composer_id=cid,
        bubble_id=f"a-{k}", request_id=gen, text="Fixed", text_length=5, model="gpt-5",
        input_tokens=999, output_tokens=9, tokens_reported=True,
    )  # fmt: skip
    database = [
        _db_trace(f"{t0}-1", f"db-u-{k}", user, t0),
        _db_trace(f"{t0}-2", f"db-a-{k}", answer, t0 + 3000),
    ]
    base = {"conversation_id": cid, "generation_id": gen, "workspace_roots": [WS_PATH],
            "model": "gpt-5"}  # fmt: skip
    tokens = {"input_tokens": 1500, "output_tokens": 40, "cache_read_tokens": 7,
              "cache_write_tokens": 3}  # fmt: skip
    raw = [
        {**base, "hook_event_name": "beforeSubmitPrompt", "prompt": "fix the bug"},
        {**base, "hook_event_name": "preToolUse", "tool_name": "Shell", "tool_use_id": f"t{k}"},
        {**base, "hook_event_name": "postToolUse", "tool_name": "Shell", "tool_use_id": f"t{k}",
         "duration": 120},
        {**base, "hook_event_name": "afterAgentResponse", "text": "Fixed it.", **tokens},
        {**base, "hook_event_name": "stop", "status": "completed", **tokens},
    ]  # fmt: skip
    hooks = []
    for i, event in enumerate(raw):
        fields = build_fields(event, {})
        fields["timestamp"] = iso_from_ms(t0 + 1000 * i)
        hooks.append(
            parse_entry(f"{t0}-{10 + i}", {k.encode(): v.encode() for k, v in fields.items()})
        )
    lines = [
        {"role": "user", "message": {"content": [{"type": "text", "text": "fix the bug"}]}},
        {"role": "assistant", "message": {"content": [{"type": "text", "text": "Fixed it."}]}},
        {"type": "turn_ended", "status": "success"},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n").encode()
    parsed = parse_lines(data, FileState(), conversation_id=cid, parent_id=None,
                         path=f"/t{k}.jsonl", capture_content=True, redact=True,
                         take_tail=False)  # fmt: skip
    transcript = [
        _db_trace(f"{t0}-{20 + i}", f"tx-{k}-{i}", p, t0 + 5000)
        for i, p in enumerate(parsed.payloads)
    ]
    return {"database": database, "hook": hooks, "transcript": transcript}


def _env(bp_env: BlueplaneEnv, url: str) -> BlueplaneEnv:
    bp_env.home.mkdir(parents=True, exist_ok=True)
    bp_env.extra["BLUEPLANE_STORE_URL"] = url
    return bp_env


def _write(url: str, batches: Sequence[Sequence[StoredEvent]]) -> None:
    store = open_store(url)
    try:
        for batch in batches:
            store.write_batch(batch, 86400)
    finally:
        store.close()


# ----------------------------------------------------------------------------- sources
@pytest.mark.parametrize("order", ["python_first", "extension_first", "same_batch"])
def test_one_trace_and_every_source_on_both(store_url: str, order: str) -> None:
    py = parse_entry("1-0", enc(ours("g1")))
    ts = parse_entry("2-0", enc(theirs("g1")))
    store = open_store(store_url)
    try:
        if order == "python_first":
            store.write_batch([py], 3600)
            result = store.write_batch([ts], 3600)
            assert (result.inserted, result.duplicates) == (0, 1)
        elif order == "extension_first":
            store.write_batch([ts], 3600)
            result = store.write_batch([py], 3600)
            assert (result.inserted, result.duplicates) == (0, 1)
        else:
            result = store.write_batch([py, ts], 3600)
            assert (result.inserted, result.duplicates) == (1, 1)
        rows = store.traces(limit=10)
        assert len(rows) == 1
        first = "extension" if order == "extension_first" else "python_monitor"
        assert rows[0]["metadata"].get("source", "extension") == first  # the first report won
        assert rows[0]["sources"] == (
            ["extension", "python_monitor"]
            if order == "extension_first"
            else ["python_monitor", "extension"]
        )
        store.write_batch([py, ts], 3600)  # a redelivery of either changes nothing
        assert [r["sources"] for r in store.traces(limit=10)] == [rows[0]["sources"]]
    finally:
        store.close()


COMPARE_BATCH = [
    ("1-0", ours("both")),
    ("2-0", theirs("both", description="explain!")),
    ("3-0", ours("only-py")),
    ("4-0", theirs("only-ts", camel=True)),
    ("5-0", theirs("no-ws", metadata="{}")),
]


def test_traces_and_compare_json_are_exact_on_postgres(
    both_urls: dict[str, str], bp_env: BlueplaneEnv
) -> None:
    got: dict[str, Any] = {}
    for kind, url in both_urls.items():
        _write(url, [[parse_entry(s, enc(f)) for s, f in COMPARE_BATCH]])
        env = _env(bp_env, url)
        by_id = {r["generation_id"]: r["sources"] for r in env.traces()}
        assert by_id == {
            "both": ["python_monitor", "extension"], "only-py": ["python_monitor"],
            "only-ts": ["extension"], "no-ws": ["extension"],
        }, kind  # fmt: skip
        proc = env.cli("compare", "--json", "--since", "2020-01-01T00:00:00Z", check=False)
        assert proc.returncode == 1, proc.stderr  # the Python monitor missed one
        got[kind] = json.loads(proc.stdout)
    pg = got["postgres"]
    # the report's own exact values (DESIGN §6), then the same as SQLite's
    assert (pg["matched"], pg["extension_events"], pg["python_events"]) == (1, 2, 2)
    assert pg["missing_in_python"] == [{"workspace_hash": WS, "generation_id": "only-ts"}]
    assert pg["missing_in_extension"] == [{"workspace_hash": WS, "generation_id": "only-py"}]
    assert pg["field_differences"] == [
        {"workspace_hash": WS, "generation_id": "both", "field": "description",
         "python": "explain", "extension": "explain!"}
    ]  # fmt: skip
    assert pg["unusable_extension_events"] == 1
    assert pg["unusable_reasons"] == {"no workspace_hash in metadata": 1}
    pg.pop("until"), got["sqlite"].pop("until")
    assert pg == got["sqlite"]


# ----------------------------------------------------------------------------- conversations
def _show_all(env: BlueplaneEnv) -> tuple[Any, list[Any]]:
    listed = env.cli_json("conversations")
    shown = [env.cli_json("show", c["conversation_id"]) for c in listed]
    return listed, shown


@pytest.mark.parametrize("order", [("database", "hook", "transcript"),
                                   ("transcript", "hook", "database")])  # fmt: skip
def test_conversations_and_show_give_the_same_json_on_both(
    both_urls: dict[str, str], bp_env: BlueplaneEnv, order: tuple[str, ...]
) -> None:
    turns = [three_sources(k) for k in range(3)]
    # a second turn of conversation 0, from the hooks and the database only
    second = three_sources(7, cid="conv-0")
    batches = [t[name] for name in order for t in turns]
    batches += [second["hook"], second["database"]]
    got = {}
    for kind, url in both_urls.items():
        _write(url, batches)
        got[kind] = _show_all(_env(bp_env, url))
    assert got["postgres"] == got["sqlite"]
    listed, shown = got["postgres"]
    assert [c["conversation_id"] for c in listed] == [
        "conv-0",
        "conv-2",
        "conv-1",
    ]  # conv-0: turn 7 last
    by_id = {s["conversation_id"]: s for s in shown}
    c1 = by_id["conv-1"]
    assert c1["sources"] == ["database", "hook", "transcript"]
    (turn,) = c1["turns"]  # show: the turns themselves
    assert turn["sources"] == ["database", "hook", "transcript"]
    assert (turn["input_tokens"], turn["output_tokens"], turn["cache_read_tokens"],
            turn["cache_write_tokens"]) == (1500, 40, 7, 3)  # fmt: skip
    assert turn["prompt"] == "fix the bug" and turn["response"] == "Fixed it."
    assert turn["tools"] == [{"name": "Shell", "duration_ms": 120, "ok": True}]
    assert turn["model"] == "gpt-5" and turn["generation_id"] == "gen-1"
    c0 = next(c for c in listed if c["conversation_id"] == "conv-0")
    assert c0["turns"] == 2 and (c0["input_tokens"], c0["output_tokens"]) == (3000, 80)
    assert [len(by_id[f"conv-{k}"]["turns"]) for k in range(3)] == [2, 1, 1]


# ----------------------------------------------------------------------------- writers at once
def _at_once(url: str, work: Sequence[Sequence[Sequence[StoredEvent]]]) -> None:
    """One store per worker, every worker writing its batches at the same time."""
    stores = [open_store(url) for _ in work]
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(store: TraceStore, batches: Sequence[Sequence[StoredEvent]]) -> None:
        try:
            start.wait()
            for batch in batches:
                store.write_batch(batch, 86400)
        except Exception as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, b)) for s, b in zip(stores, work, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors, errors


def test_two_writers_at_once_leave_one_turn_and_one_trace(store_url: str) -> None:
    n = 12
    turns = [three_sources(k) for k in range(n)]
    # writer A: the hooks and the Python monitor; writer B: the database, the transcript and
    # the extension, the same turns and generations, batch against batch
    a: list[list[StoredEvent]] = []
    b: list[list[StoredEvent]] = []
    for k, t in enumerate(turns):
        a.append([*t["hook"], parse_entry(f"9{k}-0", enc(ours(f"g{k}")))])
        b.append([*t["database"], *t["transcript"], parse_entry(f"9{k}-1", enc(theirs(f"g{k}")))])
    _at_once(store_url, [a, b])
    store = open_store(store_url, readonly=True)
    try:
        listed = conversations.list_conversations(store, limit=100)
        assert len(listed) == n
        for c in listed:
            got = conversations.get_conversation(store, c.conversation_id)
            assert got is not None
            conv, conv_turns = got
            assert conv.turns == 1 and len(conv_turns) == 1, conv
            assert conv_turns[0].sources == ["database", "hook", "transcript"]
            assert (conv.input_tokens, conv.output_tokens) == (1500, 40)
        gens = store.traces(limit=1000, trace_type="generation")
        assert sorted(r["generation_id"] for r in gens) == sorted(f"g{k}" for k in range(n))
        assert all(sorted(r["sources"]) == ["extension", "python_monitor"] for r in gens)
    finally:
        store.close()


def _revision(k: int, i: int, event_id: str) -> StoredEvent:
    """Revision 0 of the generation ``g{k}-{i}`` (one trace revision), under ``event_id``."""
    fields = {
        "event_type": "database_trace", "event_id": event_id, "session_id": "s-race",
        "timestamp": "2026-11-27T04:00:00Z",
        "payload": json.dumps({"trace_type": "composer", "item_key": f"g{k}-{i}",
                               "generation_id": f"g{k}-{i}", "revision": 0}),
        "metadata": json.dumps({"workspace_hash": WS}),
    }  # fmt: skip
    return parse_entry(f"1700000000000-{i}", enc(fields))


def test_writers_racing_on_the_same_revisions_store_each_once(store_url: str) -> None:
    """Three writers, batch against batch, each holding the same trace revisions under its own
    event ids, the same redelivered entries, and the same generations from two sources, in a
    different order: every revision, every entry and every generation is stored once. (On
    PostgreSQL the writers insert in parallel and decide under the lock: a decision taken
    without it stores a revision two or three times here.)"""
    rounds, per = 8, 200
    work: list[list[list[StoredEvent]]] = [[], [], []]
    for k in range(rounds):
        for w in range(3):
            batch = [_revision(k, i, f"w{w}-{k}-{i}") for i in range(per)]
            if k % 2:  # a redelivered entry: the same event id in every writer's batch
                batch += [_revision(k, per + i, f"shared-{k}-{i}") for i in range(30)]
            gen = ours if w % 2 == 0 else theirs
            batch += [parse_entry(f"9{k}-{w}", enc(gen(f"gen-{k}-{i}"))) for i in range(20)]
            work[w].append(batch[::-1] if w == 1 else batch)
    _at_once(store_url, work)
    store = open_store(store_url, readonly=True)
    try:
        rows = store.traces(limit=100_000)
        keys = [(r["trace_type"], r["generation_id"], r["revision"]) for r in rows]
        assert len(keys) == len(set(keys)), "a trace revision stored twice"
        assert len({r["event_id"] for r in rows}) == len(rows)
        composers = [k for k in keys if k[0] == "composer"]
        assert len(composers) == rounds * per + (rounds // 2) * 30
        gens = [r["generation_id"] for r in rows if r["trace_type"] == "generation"]
        assert sorted(gens) == sorted(f"gen-{k}-{i}" for k in range(rounds) for i in range(20))
    finally:
        store.close()


def test_an_entry_twice_in_one_batch_is_stored_once_on_both(store_url: str) -> None:
    """A redelivered entry can sit twice in one batch (read again before its first copy was
    acknowledged): the first copy is stored, counted once in the activity, indexed once; the
    second is a duplicate, as SQLite's OR IGNORE makes it. (PostgreSQL's writer once took the
    second copy for a later revision of the same trace and deleted the stored row.)"""
    twice, other = _revision(1, 0, "twice"), _revision(1, 1, "other")
    store = open_store(store_url)
    try:
        result = store.write_batch([twice, other, twice], 3600)
        assert (result.inserted, result.duplicates) == (2, 1)
        assert sorted(r["event_id"] for r in store.traces(limit=10)) == ["other", "twice"]
        traces = store.conn.execute("SELECT SUM(traces) FROM activity_daily").fetchone()[0]
        assert int(traces) == 2
    finally:
        store.close()


# ----------------------------------------------------------------------------- older stores
def _drop_conversation_tables(url: str) -> None:
    """Make the store what schema 3 left: no conv_* tables, never indexed."""
    drops = [f"DROP TABLE {t.name}" for t in CONVERSATION_TABLES]
    unmark = [
        "DELETE FROM store_meta WHERE key = 'conversations_indexed'",
        "UPDATE store_meta SET value = '3' WHERE key = 'schema_version'",
    ]
    if url.startswith("sqlite://"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite://") :]) as conn:
            for stmt in drops + unmark:
                conn.execute(stmt)
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            for stmt in drops + unmark:
                conn.execute(stmt)  # type: ignore[arg-type]


def test_a_store_from_before_the_conversation_tables_is_indexed_once(
    store_url: str, bp_env: BlueplaneEnv
) -> None:
    t = three_sources(1)
    _write(store_url, [t["transcript"], t["hook"], t["database"]])
    env = _env(bp_env, store_url)
    before = _show_all(env)
    _drop_conversation_tables(store_url)
    # a reader of the older store: no conversations yet, no error
    assert env.cli_json("conversations") == []
    store = open_store(store_url)  # a writer of this version: migrates, then indexes once
    store.close()
    assert _show_all(env) == before
    assert before[1][0]["turns"][0]["sources"] == ["database", "hook", "transcript"]
    reader = open_store(store_url, readonly=True)
    try:
        assert reader.conn.execute(
            "SELECT value FROM store_meta WHERE key = 'schema_version'"
        ).fetchone() == (str(SCHEMA_VERSION),)
    finally:
        reader.close()


def test_turns_read_from_either_store_by_day(store_url: str) -> None:
    _write(store_url, [three_sources(k)["hook"] for k in range(3)])
    store = open_store(store_url, readonly=True)
    try:
        days = conversations.token_totals_by_day(store)
        assert [(d.day, d.turns, d.input_tokens, d.output_tokens) for d in days] == [
            ("2025-12-25", 3, 4500, 120)
        ]
        assert all(type(d.input_tokens) is int for d in days)
    finally:
        store.close()
