"""Publisher against a real Redis: dedup within the window, watermark atomic with the XADDs."""

from __future__ import annotations

import json

import pytest

from blueplane.cursor.layouts.base import TraceItem
from blueplane.events import GenerationPayload
from blueplane.publisher import Destination, Publisher, dedup_key, watermark_key

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


async def test_a_failed_transaction_never_leads_to_a_duplicate(client) -> None:
    """Each XADD travels with its dedup key: even a half-applied EXEC cannot cause a repeat."""
    pub = Publisher(client, STREAM, dedup_window_s=60)
    await client.set(watermark_key("/db"), "not a hash")  # HSET will fail inside EXEC
    with pytest.raises(Exception, match="HSET"):
        await pub.publish([(DEST, item("z"))], "/db", "lay", {"ids": ["z"]})
    await client.delete(watermark_key("/db"))
    # The monitor retries with the same items: the event is not sent a second time.
    assert await pub.publish([(DEST, item("z"))], "/db", "lay", {"ids": ["z"]}) == 0
    assert await client.xlen(STREAM) == 1
    assert await pub.load_watermarks("/db") == {"lay": {"ids": ["z"]}}


async def test_corrupt_watermark_is_dropped_not_fatal(client) -> None:
    pub = Publisher(client, STREAM, dedup_window_s=60)
    await client.hset(watermark_key("/db"), mapping={"good": json.dumps({"a": 1}), "bad": "{no"})
    assert await pub.load_watermarks("/db") == {"good": {"a": 1}}
