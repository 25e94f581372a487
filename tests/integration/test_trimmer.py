"""StreamTrimmer: the stream stays bounded with or without the consumer, and no reader (any
consumer group, the session monitor) ever loses an entry it has not acknowledged or read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from blueplane.fast_path.trimmer import StreamTrimmer
from blueplane.health import Health
from blueplane.keys import POSITION_KEY
from tests.conftest import BlueplaneEnv, wait_until
from tests.integration.reliability_support import STREAM
from tests.integration.test_consumer import trace_fields

pytestmark = pytest.mark.integration


@pytest.fixture
async def aclient(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def sid(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


async def test_two_groups_the_slowest_one_bounds_trimming(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis
) -> None:
    ids = [redis_client.xadd(STREAM, trace_fields(f"t-{i}")) for i in range(400)]
    redis_client.set(POSITION_KEY, ids[-1])
    for group in ("fast", "slow"):
        redis_client.xgroup_create(STREAM, group, id="0")
    redis_client.xreadgroup("fast", "c", {STREAM: ">"}, count=400)
    redis_client.xack(STREAM, "fast", *ids)  # the fast group is done with everything
    redis_client.xreadgroup("slow", "c", {STREAM: ">"}, count=300)
    redis_client.xack(STREAM, "slow", *ids[:50])  # 250 pending, 100 never delivered
    trimmer = StreamTrimmer(aclient, STREAM, 100, Health())
    removed = await trimmer.trim()
    assert removed == 50  # exactly what every reader has acknowledged
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[50:]
    # The slow group acknowledges what it read; its undelivered 100 still hold trimming back.
    redis_client.xack(STREAM, "slow", *ids[50:200])
    assert await trimmer.trim() == 150
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[200:]
    redis_client.xack(STREAM, "slow", *ids[200:300])
    await trimmer.trim()
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[300:]  # the 100 undelivered
    assert trimmer.health.counters["trimmed"] == 300


async def test_the_session_monitor_position_bounds_trimming(
    aclient: aioredis.Redis, redis_client: sync_redis.Redis
) -> None:
    ids = [redis_client.xadd(STREAM, trace_fields(f"t-{i}")) for i in range(300)]
    trimmer = StreamTrimmer(aclient, STREAM, 100, Health())
    assert await trimmer.trim() == 0  # no position saved yet: it may not have read anything
    redis_client.set(POSITION_KEY, ids[119])
    assert await trimmer.trim() == 120
    assert redis_client.xrange(STREAM, count=1)[0][0] == ids[120]


def test_the_server_trims_with_the_consumer_disabled(
    bp_env: BlueplaneEnv, server: Callable[[], Any], redis_client: sync_redis.Redis
) -> None:
    bp_env.extra.update(
        BLUEPLANE_FAST_PATH__ENABLED="false",
        BLUEPLANE_FAST_PATH__MAX_STREAM_LENGTH="100",
        BLUEPLANE_FAST_PATH__TRIM_INTERVAL_SECONDS="0.2",
    )
    ids = [redis_client.xadd(STREAM, trace_fields(f"t-{i}")) for i in range(300)]
    redis_client.xgroup_create(STREAM, "other-app", id="0")
    redis_client.xreadgroup("other-app", "c", {STREAM: ">"}, count=250)
    redis_client.xack(STREAM, "other-app", *ids[:250])
    server()
    wait_until(lambda: redis_client.xlen(STREAM) == 100, what="the stream trimmed to 100")
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[200:]
    assert [g["name"] for g in redis_client.xinfo_groups(STREAM)] == ["other-app"]

    def trimmed() -> int | None:
        comp = bp_env.cli_json("status")["components"].get("stream_trimmer", {})
        return comp.get("counters", {}).get("trimmed")

    assert wait_until(trimmed, what="trimmer counter in status") == 200
    # New entries the other group has not read are never trimmed, however many arrive.
    more = [redis_client.xadd(STREAM, trace_fields(f"u-{i}")) for i in range(200)]
    wait_until(lambda: redis_client.get(POSITION_KEY) == more[-1], what="session monitor read")
    wait_until(lambda: trimmed() == 250, what="trimmed up to the group's first unread entry")
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[250:] + more
