"""FastPathConsumer against the test Redis and a real store: exactly once, never stuck.

Decision on unknown event types: ``telemetry:events`` is shared with the editor extension's
hook events (``pre_tool_use``, ``after_file_edit``, …), which this server does not interpret
but must not lose. An entry with a well-formed envelope and an ``event_type`` we do not know is
therefore *stored* as a generic event (payload and metadata kept), not dead-lettered. Only
entries that cannot be parsed at all — no ``event_type``, invalid JSON, wrong JSON types, a
``database_trace`` without its required fields, non-UTF-8 bytes, oversized entries — go to the
dead-letter stream with the reason.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from blueplane.config import MAX_BLOCK_MS, FastPathConfig
from blueplane.events import TraceEvent, TraceMetadata
from blueplane.fast_path.consumer import MAX_ENTRY_BYTES, FastPathConsumer
from blueplane.fast_path.trimmer import StreamTrimmer
from blueplane.health import Health
from blueplane.keys import POSITION_KEY
from blueplane.store import TraceStore
from tests.conftest import BlueplaneEnv, async_wait_until, wait_until
from tests.integration.reliability_support import (
    DEAD_LETTER,
    STREAM,
)

pytestmark = pytest.mark.integration
GROUP = "blueplane-fast-path"


def trace_fields(gen_id: str, session: str = "s-1", **payload: Any) -> dict[str, str]:
    event = TraceEvent(
        event_id=TraceEvent.make_event_id("w" * 16, f"generation:{gen_id}:0"),
        session_id=session,
        external_session_id=session,
        timestamp="2026-01-02T03:04:05.000Z",
        metadata=TraceMetadata(workspace_hash="w" * 16),
        payload={"trace_type": "generation", "generation_id": gen_id, **payload},
    )
    return event.to_fields()


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    s = TraceStore(tmp_path / "telemetry.db")
    yield s  # type: ignore[misc]
    s.close()


def make_consumer(
    client: aioredis.Redis, store: TraceStore, name: str = "fast-path-1", **cfg: Any
) -> FastPathConsumer:
    config = FastPathConfig(consumer=name, **cfg)
    return FastPathConsumer(client, config, STREAM, store, 24 * 3600, Health())


def stored_ids(store: TraceStore) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT generation_id FROM events").fetchall()]


async def drain(consumer: FastPathConsumer, rounds: int = 10) -> None:
    for _ in range(rounds):
        await consumer.step(block_ms=None)


async def test_restart_drains_own_pending_entries_first(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    first = make_consumer(aclient, store)
    await first.ensure_group()
    for i in range(5):
        redis_client.xadd(STREAM, trace_fields(f"old-{i}"))
    # The previous process read these and died before storing/acknowledging them.
    delivered = redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: ">"}, count=5)
    assert len(delivered[0][1]) == 5
    for i in range(3):
        redis_client.xadd(STREAM, trace_fields(f"new-{i}"))
    restarted = make_consumer(aclient, store)
    handled = await restarted.step(block_ms=None)
    assert handled == 5
    assert sorted(stored_ids(store)) == [f"old-{i}" for i in range(5)]
    await drain(restarted)
    assert len(stored_ids(store)) == 8
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


async def test_xautoclaim_takes_over_a_dead_consumers_pending_entries(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    consumer = make_consumer(aclient, store, claim_idle_ms=1000)
    await consumer.ensure_group()
    for i in range(4):
        redis_client.xadd(STREAM, trace_fields(f"orphan-{i}"))
    redis_client.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=10)
    assert redis_client.xpending(STREAM, GROUP)["consumers"] == [
        {"name": "dead-consumer", "pending": 4}
    ]
    await drain(consumer, 2)
    assert stored_ids(store) == []  # not idle long enough yet: not claimed
    wait_until(  # idle in Redis past claim_idle_ms: now claimable
        lambda: all(
            p["time_since_delivered"] >= 1000
            for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
        ),
        what="the orphans idle for 1 s",
    )
    consumer._last_claim = 0.0
    await drain(consumer, 2)
    assert sorted(stored_ids(store)) == [f"orphan-{i}" for i in range(4)]
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


async def test_the_same_event_delivered_twice_is_stored_once(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    consumer = make_consumer(aclient, store)
    await consumer.ensure_group()
    fields = trace_fields("g-1")
    redis_client.xadd(STREAM, fields)
    await drain(consumer)
    redis_client.xadd(STREAM, fields)  # e.g. republished after a lost acknowledgement
    await drain(consumer)
    assert stored_ids(store) == ["g-1"]
    assert consumer.health.counters.get("duplicates_dropped") == 1
    # Direct store writes are idempotent on event_id as well.
    from blueplane.fast_path.consumer import parse_entry

    ev = parse_entry("1-1", {k.encode(): v.encode() for k, v in fields.items()})
    result = store.write_batch([ev, ev], 3600)
    assert (result.inserted, result.duplicates) == (0, 2)


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("missing event_type", {"payload": "{}"}, "missing 'event_type'"),
    ("empty event_type", {"event_type": "", "payload": "{}"}, "missing 'event_type'"),
    (
        "invalid JSON payload",
        {"event_type": "database_trace", "payload": "{nope"},
        "not valid JSON",
    ),
    ("invalid JSON metadata", {"event_type": "x", "metadata": "[1,"}, "not valid JSON"),
    ("payload is a list", {"event_type": "database_trace", "payload": "[1,2]"}, "not an object"),
    ("metadata is a string", {"event_type": "hook", "metadata": '"text"'}, "not an object"),
    (
        "trace without generation_id",
        {"event_type": "database_trace", "session_id": "s", "payload": '{"trace_type":"g"}'},
        "payload.generation_id",
    ),
    (
        "trace without session_id",
        {"event_type": "database_trace", "payload": '{"trace_type":"g","generation_id":"x"}'},
        "session_id",
    ),
    (
        "generation_id is a number",
        {
            "event_type": "database_trace",
            "session_id": "s",
            "payload": '{"trace_type":"g","generation_id":42}',
        },
        "payload.generation_id",
    ),
    (
        "revision is a string",
        {
            "event_type": "database_trace",
            "session_id": "s",
            "payload": '{"trace_type":"g","generation_id":"x","revision":"2"}',
        },
        "revision",
    ),
    ("not UTF-8", {"event_type": b"\xff\xfe", "payload": "{}"}, "not UTF-8"),
    (
        "oversized",
        {
            "event_type": "database_trace",
            "session_id": "s",
            "payload": json.dumps(
                {"trace_type": "g", "generation_id": "big", "text": "x" * (MAX_ENTRY_BYTES + 10)}
            ),
        },
        "byte limit",
    ),
]


async def test_malformed_entries_of_every_kind_go_to_the_dead_letter_stream_once(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    consumer = make_consumer(aclient, store)
    await consumer.ensure_group()
    raw = sync_redis.Redis(connection_pool=redis_client.connection_pool)
    ids = {}
    redis_client.xadd(STREAM, trace_fields("good-before"))
    for name, fields, _reason in MALFORMED:
        ids[raw.xadd(STREAM, fields)] = name
    hook = {
        "event_type": "pre_tool_use",
        "hook_type": "PreToolUse",
        "platform": "cursor",
        "session_id": "ext-1",
        "timestamp": "2026-01-02T03:04:05Z",
        "payload": '{"tool":"read_file"}',
        "metadata": '{"workspace_hash":"abc"}',
    }
    redis_client.xadd(STREAM, hook)
    redis_client.xadd(STREAM, trace_fields("good-after"))
    await drain(consumer)

    dead = redis_client.xrange(DEAD_LETTER)
    assert len(dead) == len(MALFORMED)
    by_name = {ids[d["original_id"]]: d for _id, d in dead}
    for name, _fields, reason in MALFORMED:
        assert reason in by_name[name]["reason"], (name, by_name[name]["reason"])
        assert by_name[name]["original_stream"] == STREAM
        assert len(by_name[name]["fields"]) < MAX_ENTRY_BYTES  # the copy is capped
    # Good entries on both sides of the bad ones flowed; the hook event is kept as generic.
    assert sorted(x for x in stored_ids(store) if x) == ["good-after", "good-before"]
    types = dict(store.conn.execute("SELECT event_type, hook_type FROM events").fetchall())
    assert types["pre_tool_use"] == "PreToolUse"
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    # Restart: nothing is redelivered, nothing dead-lettered twice.
    again = make_consumer(aclient, store)
    await drain(again)
    assert redis_client.xlen(DEAD_LETTER) == len(MALFORMED)


async def test_an_entry_redelivered_too_often_is_dead_lettered_not_looped(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    consumer = make_consumer(aclient, store, max_deliveries=3)
    await consumer.ensure_group()
    sid = redis_client.xadd(STREAM, trace_fields("poison"))
    # Four earlier runs each read it and crashed before acknowledging.
    redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: ">"})
    for _ in range(3):
        redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: "0"})
    await drain(consumer)
    dead = redis_client.xrange(DEAD_LETTER)
    assert [d["original_id"] for _id, d in dead] == [sid]
    assert "delivered more than 3 times" in dead[0][1]["reason"]
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def _sid(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


async def test_trim_never_removes_unacknowledged_or_unread_entries(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
) -> None:
    consumer = make_consumer(aclient, store, max_stream_length=100)
    trimmer = StreamTrimmer(aclient, STREAM, 100, Health())
    await consumer.ensure_group()
    ids = [redis_client.xadd(STREAM, trace_fields(f"t-{i}")) for i in range(400)]
    redis_client.set(POSITION_KEY, ids[-1])  # the session monitor has read everything
    # 300 delivered, only the first 50 acknowledged; the last 100 never delivered.
    redis_client.xreadgroup(GROUP, "other", {STREAM: ">"}, count=300)
    redis_client.xack(STREAM, GROUP, *ids[:50])
    for _ in range(3):
        await trimmer.trim()
    # XTRIM MINID ~ removes whole nodes only: maybe fewer than 50, never one more.
    first = redis_client.xrange(STREAM, count=1)[0][0]
    assert _sid(first) <= _sid(ids[50])
    kept = [i for i, _ in redis_client.xrange(STREAM, min=ids[50], max="+")]
    assert kept == ids[50:]  # every pending and every undelivered entry is still there
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 250
    # Everything acknowledged: trimmed towards max_stream_length, never below it.
    redis_client.xack(STREAM, GROUP, *ids[50:300])
    await drain(consumer, 5)
    for _ in range(5):
        await trimmer.trim()
    assert 100 <= redis_client.xlen(STREAM) < 400
    # The session monitor lagging behind also holds trimming back.
    more = [redis_client.xadd(STREAM, trace_fields(f"u-{i}")) for i in range(150)]
    redis_client.set(POSITION_KEY, ids[-1])
    await drain(consumer, 5)
    for _ in range(5):
        await trimmer.trim()
    kept = [i for i, _ in redis_client.xrange(STREAM, min=more[0], max="+")]
    assert kept == more


async def test_status_shows_length_lag_pending_and_dead_letters(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(7):
        redis_client.xadd(STREAM, trace_fields(f"s-{i}"))
    redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: ">"}, count=3)
    for i in range(2):
        redis_client.xadd(DEAD_LETTER, {"reason": f"r{i}", "original_id": f"{i}-0"})
    bp_env.home.mkdir(parents=True)
    status = bp_env.cli_json("status")
    st = status["stream"]
    assert st["reachable"] is True
    assert st["stream_length"] == 7
    assert st["pending"] == 3
    assert st["dead_letter_length"] == 2
    text = bp_env.cli("status").stdout
    assert "pending 3" in text and "dead-lettered 2" in text
    if int(str(redis_client.info("server")["redis_version"]).split(".")[0]) >= 7:
        assert st["consumer_lag"] == 4  # XINFO GROUPS reports lag since Redis 7.0
        assert "consumer lag 4" in text


def test_store_is_idempotent_across_processes(tmp_path: Path) -> None:
    """Two store handles (a restart) writing the same event keep one row."""
    from blueplane.fast_path.consumer import parse_entry

    fields = {k.encode(): v.encode() for k, v in trace_fields("x").items()}
    for _ in range(2):
        s = TraceStore(tmp_path / "telemetry.db")
        s.write_batch([parse_entry("1-1", fields)], 3600)
        s.close()
    conn = sqlite3.connect(tmp_path / "telemetry.db")
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    conn.close()


async def test_reading_waits_while_the_publisher_catches_up_then_stores_everything(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, store: TraceStore
) -> None:
    """During a first sync the store trails the stream: nothing is read while the publisher
    of the process says it is catching up, everything right after."""
    for i in range(5):
        redis_client.xadd(STREAM, trace_fields(f"g-{i}"))
    holding, asked = True, 0

    def catch_up() -> float:
        nonlocal asked
        asked += 1
        return 0.02 if holding else 0.0

    consumer = make_consumer(aclient, store)
    consumer.catch_up = catch_up
    await consumer.ensure_group()
    await consumer.step(block_ms=None)  # its own pending entries: none
    step = asyncio.create_task(consumer.step(block_ms=None))
    while asked < 5 and not step.done():  # asked again after each short wait, still holding
        await asyncio.sleep(0.01)
    assert not step.done()
    assert stored_ids(store) == []
    assert redis_client.xinfo_groups(STREAM)[0]["pending"] == 0  # not even read
    holding = False
    assert await step == 5
    assert sorted(stored_ids(store)) == [f"g-{i}" for i in range(5)]


async def test_a_catch_up_that_goes_on_delays_a_read_by_at_most_the_cap(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    store: TraceStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """...and what piled up is read in CATCH_UP_BATCH batches until a read comes back short."""
    monkeypatch.setattr("blueplane.fast_path.consumer.CATCH_UP_MAX_DEFER_S", 0.2)
    monkeypatch.setattr("blueplane.fast_path.consumer.CATCH_UP_BATCH", 2)
    for i in range(3):
        redis_client.xadd(STREAM, trace_fields(f"c-{i}"))
    consumer = make_consumer(aclient, store)
    ends = [60.0]
    consumer.catch_up = lambda: ends[0]  # goes on until the test ends it
    await consumer.ensure_group()
    await consumer.step(block_ms=None)
    assert await asyncio.wait_for(consumer.step(block_ms=None), timeout=10) == 2
    ends[0] = 0.0
    assert await consumer.step(block_ms=None) == 1  # short: caught up
    for i in range(3):
        redis_client.xadd(STREAM, trace_fields(f"d-{i}"))
    assert await consumer.step(block_ms=None) == 3  # batch_size again
    assert len(stored_ids(store)) == 6


async def test_a_long_idle_block_neither_delays_an_entry_nor_the_stop(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, store: TraceStore
) -> None:
    """Caught up, one XREADGROUP blocks for ``block_ms`` (few idle round-trips): a new entry
    ends it at once, a stop does not wait for it, and nothing read is lost or doubled."""
    consumer = make_consumer(aclient, store, block_ms=MAX_BLOCK_MS)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))

    def blocked() -> bool:  # our read waits in Redis (other tests share the server)
        return any(
            c.get("cmd") == "xreadgroup" and c.get("db") == db and "b" in c.get("flags", "")
            for c in redis_client.client_list()
        )

    try:
        await async_wait_until(blocked, "the consumer blocks on the stream")
        loop = asyncio.get_running_loop()
        added = loop.time()
        redis_client.xadd(STREAM, trace_fields("while-blocked"))
        await async_wait_until(lambda: stored_ids(store) == ["while-blocked"], "the entry stored")
        assert loop.time() - added < 5.0  # not at the block's end
        await async_wait_until(blocked, "blocked again")
        stopping = loop.time()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert loop.time() - stopping < 2.0
        assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
        assert await aclient.ping()  # the shared client works after the cancelled read
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert stored_ids(store) == ["while-blocked"]
