"""The fast path never dies of one bad write (issue 9): a real SQLite store made unusable by a
real lock, a shutdown during a write, XAUTOCLAIM paging, XPENDING per consumer.

Every wait is on the thing itself (a counter, a row count, a pending count), never a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from blueplane.config import FastPathConfig
from blueplane.fast_path.consumer import FastPathConsumer, parse_entry
from blueplane.health import Health
from blueplane.store import TraceStore
from tests.conftest import BlueplaneEnv, wait_until
from tests.integration.reliability_support import DEAD_LETTER, STREAM
from tests.integration.test_consumer import trace_fields

pytestmark = pytest.mark.integration
GROUP = "blueplane-fast-path"


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last={last!r})")


def rows(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT generation_id FROM events")]
    finally:
        conn.close()


def lock_exclusively(db: Path) -> sqlite3.Connection:
    """Another process's view: a writer holding the store's write lock."""
    conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.fixture
async def aclient(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def consumer_for(
    client: aioredis.Redis, store: TraceStore, name: str = "fast-path-1", **cfg: Any
) -> FastPathConsumer:
    config = FastPathConfig(consumer=name, **cfg)
    return FastPathConsumer(client, config, STREAM, store, 24 * 3600, Health())


async def test_a_locked_store_keeps_entries_pending_and_resumes_when_released(
    aclient: aioredis.Redis,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "telemetry.db"
    store = TraceStore(db, busy_timeout_ms=50)
    consumer = consumer_for(
        aclient, store, store_retry_initial_seconds=0.02, store_retry_max_seconds=0.1
    )
    await consumer.ensure_group()
    for i in range(50):
        redis_client.xadd(STREAM, trace_fields(f"g-{i}"))
    locker = lock_exclusively(db)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="blueplane.fast_path")
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: consumer.health.counters.get("store_errors", 0) >= 5,
                       what="five failed store attempts")  # fmt: skip
        assert not task.done()  # still running: the error did not escape run()
        assert consumer.health.status == "store_unavailable"
        assert "database is locked" in (consumer.health.last_error or "")
        assert redis_client.xpending(STREAM, GROUP)["pending"] == 50  # not acknowledged
        # The batch is retried from memory: a long outage does not raise the delivery count
        # (which would send good entries to the dead-letter stream).
        info = redis_client.xpending_range(STREAM, GROUP, "-", "+", 100)
        assert {p["times_delivered"] for p in info} == {1}
        errors = [r for r in caplog.records if "cannot write the store" in r.getMessage()]
        assert len(errors) == 1  # one line per minute, not one per retry
        locker.execute("ROLLBACK")
        await wait_for(lambda: len(rows(db)) == 50, what="all 50 stored after release")
        await wait_for(
            lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 0, what="all acked"
        )
        assert sorted(rows(db)) == sorted(f"g-{i}" for i in range(50))  # exactly once
        assert consumer.health.status == "ok"
        assert any("writable again" in r.getMessage() for r in caplog.records)
        assert redis_client.xlen(DEAD_LETTER) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        locker.close()
        store.close()


async def test_stop_while_the_store_is_unusable_leaves_the_batch_pending(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    db = tmp_path / "telemetry.db"
    store = TraceStore(db, busy_timeout_ms=50)
    consumer = consumer_for(aclient, store, store_retry_initial_seconds=5)
    await consumer.ensure_group()
    redis_client.xadd(STREAM, trace_fields("kept"))
    locker = lock_exclusively(db)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await wait_for(lambda: consumer.health.counters.get("store_errors"), what="a store error")
    stop.set()
    await asyncio.wait_for(task, 2)  # returns promptly, not after the 5 s backoff
    locker.close()
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 1
    # The next run stores it, once.
    restarted = consumer_for(aclient, store)
    for _ in range(3):
        await restarted.step(block_ms=None)
    assert rows(db) == ["kept"]
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    store.close()


async def test_cancelled_consumer_lets_its_in_flight_write_finish_before_close(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    """The server cancels tasks that outlive the grace period and then closes the store."""
    db = tmp_path / "telemetry.db"
    store = TraceStore(db, busy_timeout_ms=5000)
    consumer = consumer_for(aclient, store)
    await consumer.ensure_group()
    for i in range(20):
        redis_client.xadd(STREAM, trace_fields(f"f-{i}"))
    locker = lock_exclusively(db)  # the write waits on the lock (busy_timeout)
    task = asyncio.create_task(consumer.run(asyncio.Event()))
    await wait_for(lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 20, what="read")
    await wait_for(lambda: getattr(store, "writing", True), what="write in flight")
    threading.Timer(0.3, locker.rollback).start()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.close()  # as the server does right after its tasks stopped
    locker.close()
    assert sorted(rows(db)) == sorted(f"f-{i}" for i in range(20))


def test_store_close_waits_for_a_write_running_in_another_thread(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    store = TraceStore(db, busy_timeout_ms=5000)
    events = [
        parse_entry(f"{i}-0", {k.encode(): v.encode() for k, v in trace_fields(f"c-{i}").items()})
        for i in range(10)
    ]
    locker = lock_exclusively(db)
    outcome: list[Any] = []

    def write() -> None:
        try:
            outcome.append(store.write_batch(events, 3600))
        except sqlite3.Error as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: store.writing, what="write in flight")
    threading.Timer(0.3, locker.rollback).start()
    store.close()
    writer.join(10)
    locker.close()
    assert [getattr(o, "inserted", o) for o in outcome] == [10]
    assert len(rows(db)) == 10
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.write_batch(events, 3600)


async def test_xautoclaim_claims_every_idle_entry_of_every_consumer_page_by_page(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    store = TraceStore(tmp_path / "telemetry.db")
    consumer = consumer_for(aclient, store, batch_size=100, claim_idle_ms=60_000)
    await consumer.ensure_group()
    ids = [redis_client.xadd(STREAM, trace_fields(f"o-{i}")) for i in range(280)]
    redis_client.xreadgroup(GROUP, "dead-a", {STREAM: ">"}, count=250)
    redis_client.xreadgroup(GROUP, "dead-b", {STREAM: ">"}, count=30)
    # Make them idle for two minutes without waiting two minutes (XCLAIM ... IDLE).
    for name, part in (("dead-a", ids[:250]), ("dead-b", ids[250:])):
        redis_client.xclaim(STREAM, GROUP, name, 0, part, idle=120_000)
    fresh = redis_client.xadd(STREAM, trace_fields("fresh"))
    redis_client.xreadgroup(GROUP, "alive", {STREAM: ">"}, count=1)  # busy, not idle
    claimed = await consumer._claim_stale()
    assert claimed == 280  # three pages of 100, in one round
    assert len(rows(tmp_path / "telemetry.db")) == 280
    pending = redis_client.xpending_range(STREAM, GROUP, "-", "+", 1000)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(fresh, "alive")]
    store.close()


async def test_over_delivered_entries_are_found_among_other_consumers_pending_ones(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    store = TraceStore(tmp_path / "telemetry.db")
    consumer = consumer_for(aclient, store, max_deliveries=2)
    await consumer.ensure_group()
    ours: list[str] = []
    for i in range(10):  # ours interleaved with three times as many of another consumer's
        ours.append(redis_client.xadd(STREAM, trace_fields(f"ours-{i}")))
        redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: ">"}, count=1)
        for j in range(3):
            redis_client.xadd(STREAM, trace_fields(f"theirs-{i}-{j}"))
            redis_client.xreadgroup(GROUP, "other", {STREAM: ">"}, count=1)
    for _ in range(2):  # two earlier runs re-read our pending entries and died
        redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: "0"})
    await consumer.step(block_ms=None)
    dead = [d["original_id"] for _id, d in redis_client.xrange(DEAD_LETTER)]
    assert dead == ours
    store.close()


def test_server_keeps_running_while_its_store_is_locked_and_status_says_why(
    bp_env: BlueplaneEnv, server: Callable[[], Any], redis_client: sync_redis.Redis
) -> None:
    bp_env.extra.update(
        BLUEPLANE_FAST_PATH__STORE_RETRY_INITIAL_SECONDS="0.1",
        BLUEPLANE_FAST_PATH__STORE_RETRY_MAX_SECONDS="0.5",
    )
    proc = server()
    db = bp_env.home / "telemetry.db"
    redis_client.xadd(STREAM, trace_fields("before"))
    wait_until(lambda: rows(db) == ["before"], what="first trace stored")
    locker = lock_exclusively(db)
    with redis_client.pipeline(transaction=True) as pipe:  # one batch for the consumer
        for i in range(30):
            pipe.xadd(STREAM, trace_fields(f"during-{i}"))
        pipe.execute()

    def consumer_status() -> dict[str, Any]:
        return bp_env.cli_json("status")["components"].get("fast_path_consumer", {})

    comp = wait_until(
        lambda: (c := consumer_status()).get("status") == "store_unavailable" and c,
        timeout=30, what="status to show the store error",
    )  # fmt: skip
    assert "database is locked" in comp["last_error"]
    assert bp_env.cli_json("status")["running"] is True
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 30
    locker.rollback()
    locker.close()
    wait_until(lambda: len(rows(db)) == 31, timeout=30, what="all stored after release")
    assert sorted(rows(db)) == sorted(["before", *(f"during-{i}" for i in range(30))])
    wait_until(lambda: consumer_status().get("status") == "ok", what="status ok again")
    assert proc.proc.poll() is None
    assert proc.log().count("cannot write the store") == 1
