"""The dead-letter stream: capped, counted in ``status``, and ``blueplane dlq list|replay``
(run as the real command against the real Redis) put entries back so the consumer stores them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from blueplane.config import FastPathConfig
from blueplane.fast_path.consumer import FastPathConsumer
from blueplane.health import Health
from blueplane.store import TraceStore
from tests.conftest import BlueplaneEnv
from tests.integration.reliability_support import DEAD_LETTER, STREAM
from tests.integration.test_consumer import trace_fields

pytestmark = pytest.mark.integration
GROUP = "blueplane-fast-path"


@pytest.fixture
async def aclient(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def drain(consumer: FastPathConsumer, rounds: int = 5) -> None:
    for _ in range(rounds):
        await consumer.step(block_ms=None)


def consumer_for(client: aioredis.Redis, store: TraceStore, **cfg: Any) -> FastPathConsumer:
    return FastPathConsumer(client, FastPathConfig(**cfg), STREAM, store, 86400, Health())


async def test_the_dead_letter_stream_is_capped_and_status_counts_it(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, bp_env: BlueplaneEnv, tmp_path: Path
) -> None:
    store = TraceStore(tmp_path / "t.db")
    consumer = consumer_for(aclient, store, dead_letter_max_length=50, batch_size=100)
    await consumer.ensure_group()
    for i in range(600):
        redis_client.xadd(STREAM, {"payload": json.dumps({"n": i})})  # no event_type
    await drain(consumer, 10)
    assert consumer.health.counters["dead_lettered"] == 600
    length = redis_client.xlen(DEAD_LETTER)
    # Approximate MAXLEN keeps at least the cap and removes whole nodes (100 entries each).
    assert 50 <= length < 50 + 100 + 1
    newest = json.loads(redis_client.xrevrange(DEAD_LETTER, count=1)[0][1]["fields"])
    assert json.loads(newest["payload"]) == {"n": 599}  # the oldest went first
    bp_env.home.mkdir(parents=True)
    assert bp_env.cli_json("status")["stream"]["dead_letter_length"] == length
    store.close()


async def test_dlq_list_and_replay_through_the_command(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, bp_env: BlueplaneEnv, tmp_path: Path
) -> None:
    store = TraceStore(tmp_path / "t.db")
    consumer = consumer_for(aclient, store, max_deliveries=1)
    await consumer.ensure_group()
    # Two good traces that a crashing consumer kept failing on (redelivered too often), and one
    # entry that is malformed for good.
    good = [trace_fields(f"retry-{i}") for i in range(2)]
    for fields in good:
        redis_client.xadd(STREAM, fields)
    redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: ">"})
    redis_client.xreadgroup(GROUP, "fast-path-1", {STREAM: "0"})
    bad_id = redis_client.xadd(STREAM, {"event_type": "database_trace", "payload": "{oops"})
    await drain(consumer)
    assert redis_client.xlen(DEAD_LETTER) == 3
    bp_env.home.mkdir(parents=True)

    listed = bp_env.cli_json("dlq", "list")
    assert [d["original_id"] for d in listed][-1] == bad_id
    assert [d["fields"] for d in listed[:2]] == good  # the original fields, as they were
    assert "delivered more than 1 times" in listed[0]["reason"]
    assert "not valid JSON" in listed[2]["reason"]
    assert [d["id"] for d in listed] == [i for i, _ in redis_client.xrange(DEAD_LETTER)]
    assert len(bp_env.cli_json("dlq", "list", "--limit", "2")) == 2
    text = bp_env.cli("dlq", "list").stdout
    assert "not valid JSON" in text and bad_id in text

    # Replay one by id: back on the stream, gone from the dead letters, stored once.
    proc = bp_env.cli("dlq", "replay", listed[0]["id"])
    assert "1 replayed" in proc.stdout
    assert redis_client.xlen(DEAD_LETTER) == 2
    assert redis_client.xrevrange(STREAM, count=1)[0][1] == good[0]
    await drain(consumer)
    stored = [r[0] for r in store.conn.execute("SELECT generation_id FROM events")]
    assert stored == ["retry-0"]

    # A missing id: exit 1, said on stderr; nothing else touched.
    missing = bp_env.cli("dlq", "replay", "1-1", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    # Neither ids nor --all: a usage error.
    assert bp_env.cli("dlq", "replay", check=False).returncode == 2

    # --all: the good one is stored; the malformed one comes back to the dead letters.
    replay_all = bp_env.cli("dlq", "replay", "--all")
    assert "2 replayed" in replay_all.stdout
    await drain(consumer)
    stored = sorted(r[0] for r in store.conn.execute("SELECT generation_id FROM events"))
    assert stored == ["retry-0", "retry-1"]
    again = redis_client.xrange(DEAD_LETTER)
    assert len(again) == 1 and "not valid JSON" in again[0][1]["reason"]
    store.close()


async def test_a_truncated_dead_letter_is_not_replayed(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis, bp_env: BlueplaneEnv, tmp_path: Path
) -> None:
    store = TraceStore(tmp_path / "t.db")
    consumer = consumer_for(aclient, store)
    await consumer.ensure_group()
    redis_client.xadd(STREAM, {"event_type": "x", "payload": json.dumps({"t": "y" * 2_000_000})})
    await drain(consumer)
    ((dead_id, dead),) = redis_client.xrange(DEAD_LETTER)
    assert dead["truncated"] == "1"
    bp_env.home.mkdir(parents=True)
    proc = bp_env.cli("dlq", "replay", dead_id, check=False)
    assert proc.returncode == 1 and "cannot be rebuilt" in proc.stderr
    assert redis_client.xlen(DEAD_LETTER) == 1  # kept, for a person to look at
    store.close()
