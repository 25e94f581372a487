"""Publisher against a real Redis: dedup within the window, watermark atomic with the XADDs."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from blueplane.cursor.layouts.base import TraceItem
from blueplane.events import GenerationPayload
from blueplane.keys import dedup_key, watermark_key
from blueplane.publisher import (
    CATCH_UP_HOLD_S,
    CATCH_UP_ITEMS,
    TRACE_FIELDS,
    Destination,
    Publisher,
)

STREAM = "telemetry:events"


def item(gid: str, rev: int | None = None) -> TraceItem:
    return TraceItem(
        GenerationPayload(generation_id=gid, revision=rev), timestamp_ms=1_700_000_000_000
    )


DEST = Destination(workspace_hash="h1", session_id="s1", database_path="/db")


async def test_publish_is_deduplicated_and_stores_watermark(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=3600)
    sent = await pub.publish([(DEST, item("a")), (DEST, item("b")), (DEST, item("a"))], "/db",
                             "lay", {"ids": ["a", "b"]})  # fmt: skip
    assert sent == 2
    assert await client.xlen(STREAM) == 2
    assert await pub.load_watermarks("/db") == {"lay": {"ids": ["a", "b"]}}
    # Same items again (e.g. after a restart that lost its watermark): nothing re-sent.
    assert await pub.publish([(DEST, item("a")), (DEST, item("c"))], "/db", "lay", {"x": 1}) == 1
    assert await client.xlen(STREAM) == 3
    ttl = await client.ttl(dedup_key("h1", item("a").dedup_id))
    assert 3500 < ttl <= 3600
    # A later revision of the same item is a new event.
    assert await pub.publish([(DEST, item("a", rev=1))], "/db", "lay", {}) == 1


async def test_other_workspace_is_not_a_duplicate(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=60)
    other = Destination(workspace_hash="h2", session_id="s2")
    assert await pub.publish([(DEST, item("a")), (other, item("a"))], "/db", "lay", {}) == 2


async def test_a_failed_step_writes_nothing_and_the_retry_publishes_once(client) -> None:
    """The key types are checked before any write: a failed step leaves no half behind."""
    pub = Publisher(client, STREAM, dedup_window_s=60)
    await client.set(watermark_key("/db"), "not a hash")  # the watermark cannot be stored
    with pytest.raises(Exception, match="WRONGTYPE watermark key"):
        await pub.publish([(DEST, item("z"))], "/db", "lay", {"ids": ["z"]})
    assert await client.xlen(STREAM) == 0
    assert not await client.exists(dedup_key("h1", item("z").dedup_id))
    await client.delete(watermark_key("/db"))
    # The monitor retries with the same items: sent once, now with its watermark.
    assert await pub.publish([(DEST, item("z"))], "/db", "lay", {"ids": ["z"]}) == 1
    assert await pub.publish([(DEST, item("z"))], "/db", "lay", {"ids": ["z"]}) == 0
    assert await client.xlen(STREAM) == 1
    assert await pub.load_watermarks("/db") == {"lay": {"ids": ["z"]}}


async def test_watermark_rides_on_the_last_chunk_only(client) -> None:
    """A failure after some chunks leaves the old watermark: the re-read repeats nothing."""
    pub = Publisher(client, STREAM, dedup_window_s=60, chunk=3)
    routed = [(DEST, item(f"c{i}")) for i in range(8)]  # chunks of 3, 3, 2
    await client.set(watermark_key("/db"), "not a hash")  # only the last chunk writes it
    with pytest.raises(Exception, match="WRONGTYPE"):
        await pub.publish(routed, "/db", "lay", {"upto": 8})
    assert await client.xlen(STREAM) == 6
    await client.delete(watermark_key("/db"))
    assert await pub.publish(routed, "/db", "lay", {"upto": 8}) == 2
    ids = await _stream_generation_ids(client)
    assert sorted(ids) == sorted(f"c{i}" for i in range(8))
    assert max(ids.values()) == 1
    assert await pub.load_watermarks("/db") == {"lay": {"upto": 8}}


async def test_extra_fields_travel_with_the_watermark(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=60)
    marker = json.dumps({"inode": 42})
    assert await pub.publish([(DEST, item("e"))], "/db", "lay", {"n": 1}, {"_file": marker}) == 1
    raw = await client.hgetall(watermark_key("/db"))
    assert raw == {b"lay": b'{"n":1}', b"_file": marker.encode()}
    # Nothing routed: the watermark and the extra fields are still stored.
    assert await pub.publish([], "/db", "lay", {"n": 2}, {"_file": "{}"}) == 0
    assert await pub.load_watermarks("/db") == {"lay": {"n": 2}, "_file": {}}


async def test_set_and_reset_watermark_fields(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=60)
    await pub.set_watermark_fields("/db", {"_file": json.dumps({"inode": 7})})
    assert await pub.load_watermarks("/db") == {"_file": {"inode": 7}}
    await pub.reset_watermarks("/db")
    assert not await client.exists(watermark_key("/db"))
    assert await pub.load_watermarks("/db") == {}


async def test_events_are_encoded_as_before(client) -> None:
    """The fields on the stream are exactly ``TraceEvent.to_fields()``."""
    pub = Publisher(client, STREAM, dedup_window_s=60)
    it = item("enc")
    await pub.publish([(DEST, it)], "/db", "lay", {})
    [(_, fields)] = await client.xrange(STREAM)
    decoded = {k.decode(): v.decode() for k, v in fields.items()}
    expected = pub.build_event(DEST, it).to_fields()
    assert decoded == expected
    assert list(decoded) == list(expected)


async def test_corrupt_watermark_is_dropped_not_fatal(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=60)
    await client.hset(watermark_key("/db"), mapping={"good": json.dumps({"a": 1}), "bad": "{no"})
    assert await pub.load_watermarks("/db") == {"good": {"a": 1}}


# --------------------------------------------------------------------------- concurrency


def _items(prefix: str, n: int) -> list[tuple[Destination, TraceItem]]:
    return [(DEST, item(f"{prefix}-{i}")) for i in range(n)]


async def _stream_generation_ids(client) -> Counter[str]:
    entries = await client.xrange(STREAM)
    return Counter(json.loads(f[b"payload"])["generation_id"] for _, f in entries)


async def test_two_publishers_racing_publish_each_item_once(redis_url, client) -> None:
    """A workspace task and the global task (or two servers) emitting the same ids at once."""
    other = aioredis.Redis.from_url(redis_url)
    try:
        a = Publisher(client, STREAM, dedup_window_s=3600)
        b = Publisher(other, STREAM, dedup_window_s=3600)
        for rnd in range(3):
            routed = _items(f"r{rnd}", 1200)
            sent = await asyncio.gather(
                a.publish(routed, "/db", "lay", {"round": rnd}),
                b.publish(routed, "/db", "lay", {"round": rnd}),
            )
            assert sum(sent) == 1200
        ids = await _stream_generation_ids(client)
        assert len(ids) == 3600
        assert max(ids.values()) == 1
    finally:
        await other.aclose()


def _publish_in_process(url: str, go: Any, rounds: int, n: int, out: Any) -> None:
    """Run in a child process with its own event loop and connection."""

    async def main() -> list[int]:
        c = aioredis.Redis.from_url(url)
        pub = Publisher(c, STREAM, dedup_window_s=3600)
        sent = []
        try:
            for rnd in range(rounds):
                go.wait()
                sent.append(await pub.publish(_items(f"p{rnd}", n), "/db", "lay", {"r": rnd}))
        finally:
            await c.aclose()
        return sent

    out.put(asyncio.run(main()))


async def test_two_processes_publish_each_item_once(redis_url, client) -> None:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    rounds, n = 4, 1500
    procs = [
        ctx.Process(target=_publish_in_process, args=(redis_url, go, rounds, n, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    go.set()  # both start each round at once (they wait on the same event)
    results = [await asyncio.to_thread(out.get, True, 60) for _ in procs]
    for p in procs:
        await asyncio.to_thread(p.join, 30)
        assert p.exitcode == 0
    assert [sum(x) for x in zip(*results, strict=True)] == [n] * rounds
    ids = await _stream_generation_ids(client)
    assert len(ids) == rounds * n
    assert max(ids.values()) == 1


def test_fast_encoding_equals_the_event_model() -> None:
    """``event_values`` (the first sync's fast path) writes what ``TraceEvent.to_fields`` does."""
    pub = Publisher(aioredis.Redis(), STREAM, dedup_window_s=60)  # never connects
    dest = Destination("h9", "s9", workspace_path="/p ü", database_path="/d", storage_id="st")
    cases = [
        TraceItem(GenerationPayload(generation_id="g", description='é "q"\n\x01 😀')),
        TraceItem(GenerationPayload(generation_id="g2", revision=3), 1_700_000_000_123, "other"),
    ]
    for it in cases:
        for d in (DEST, dest):
            expected = pub.build_event(d, it).to_fields()
            got = dict(zip(TRACE_FIELDS, pub.event_values(d, it), strict=True))
            if it.timestamp_ms is None:  # "now", taken twice
                got.pop("timestamp"), expected.pop("timestamp")
            assert got == expected


def test_text_that_cannot_be_utf8_is_escaped_not_fatal() -> None:
    """A lone surrogate (a broken file or path) becomes an escape, still valid JSON."""
    pub = Publisher(aioredis.Redis(), STREAM, dedup_window_s=60)
    it = TraceItem(GenerationPayload(generation_id="s", description="a\ud800b"), 1)
    values = dict(zip(TRACE_FIELDS, pub.event_values(DEST, it), strict=True))
    values["payload"].encode("utf-8")  # what redis-py does; must not raise
    assert json.loads(values["payload"])["description"] == "a\ud800b"


async def test_a_large_publication_is_a_catch_up_and_a_small_one_is_not(client) -> None:
    """The in-process consumer yields while ``catching_up()`` is positive (see consumer)."""
    pub = Publisher(client, STREAM, dedup_window_s=60)
    assert pub.catching_up() == 0.0
    await pub.publish([(DEST, item(f"s{i}")) for i in range(CATCH_UP_ITEMS - 1)], "/db", "l", {})
    assert pub.catching_up() == 0.0
    await pub.publish([(DEST, item(f"b{i}")) for i in range(CATCH_UP_ITEMS)], "/db", "l", {})
    assert 0.0 < pub.catching_up() <= CATCH_UP_HOLD_S


async def test_any_text_reaches_the_stream_byte_for_byte(client) -> None:
    """The events' own values travel to the script as one JSON array: quotes, backslashes,
    control characters, NUL, U+2028, non-BMP text and a lone surrogate (escaped by the
    fallback encoder) all arrive exactly as encoded."""
    pub = Publisher(client, STREAM, dedup_window_s=60)
    texts = ['q"b\\s/', "tab\tnl\ncr\r\x00\x01\x1f", "é\u2028\u2029€𝄞😀", "lone \ud800 x", ""]
    items = [
        TraceItem(GenerationPayload(generation_id=f"t{i}", description=t), timestamp_ms=i + 1)
        for i, t in enumerate(texts)
    ]
    assert await pub.publish([(DEST, it) for it in items], "/db", "lay", {}) == len(items)
    entries = await client.xrange(STREAM)
    for it, (_, fields) in zip(items, entries, strict=True):
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        assert decoded == dict(zip(TRACE_FIELDS, pub.event_values(DEST, it), strict=True))
        if "\ud800" not in it.payload.description:  # type: ignore[attr-defined]
            assert decoded == pub.build_event(DEST, it).to_fields()
