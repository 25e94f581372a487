"""Deduplication and publication: XADD of new traces, atomic with the watermark they advance.

Each batch is one ``MULTI/EXEC``: the ``XADD`` of every new event, a dedup key per event
(``(workspace_hash, item id)``, with the dedup window as TTL) and the watermark of the layout
that produced them. A crash either publishes the batch and its watermark together or neither,
so a restart neither loses nor repeats anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from blueplane.cursor.layouts.base import TraceItem, Watermark
from blueplane.events import TraceEvent, TraceMetadata, iso_from_ms, iso_now

log = logging.getLogger("blueplane.publisher")

KEY_PREFIX = "blueplane:"
# Keep a transaction well below Redis's comfortable size; the watermark rides on the last one.
CHUNK = 500


def database_key(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def watermark_key(db_path: str) -> str:
    return f"{KEY_PREFIX}watermarks:{database_key(db_path)}"


def dedup_key(workspace_hash: str, dedup_id: str) -> str:
    return f"{KEY_PREFIX}dedup:{workspace_hash}:{dedup_id}"


@dataclass(frozen=True)
class Destination:
    """Where a workspace's traces go: its session and how it is described in metadata."""

    workspace_hash: str
    session_id: str
    workspace_path: str | None = None
    database_path: str | None = None
    storage_id: str | None = None


class Publisher:
    def __init__(self, redis: aioredis.Redis, stream: str, dedup_window_s: float) -> None:
        self.redis = redis
        self.stream = stream
        self.dedup_ttl_s = max(1, int(dedup_window_s))

    async def load_watermarks(self, db_path: str) -> dict[str, Watermark]:
        raw = await self.redis.hgetall(watermark_key(db_path))
        out: dict[str, Watermark] = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                log.error("watermark %s of %s is corrupt; rereading that layout", name, db_path)
                continue
            if isinstance(parsed, dict):
                out[name] = parsed
        return out

    def build_event(self, dest: Destination, item: TraceItem) -> TraceEvent:
        ts = iso_from_ms(item.timestamp_ms) if item.timestamp_ms else iso_now()
        return TraceEvent(
            event_id=TraceEvent.make_event_id(dest.workspace_hash, item.dedup_id),
            session_id=dest.session_id,
            external_session_id=dest.session_id,
            timestamp=ts,
            metadata=TraceMetadata(
                workspace_hash=dest.workspace_hash,
                workspace_path=dest.workspace_path,
                database_path=dest.database_path,
                storage_id=item.workspace_storage_id or dest.storage_id,
            ),
            payload=item.payload.to_json_dict(),
        )

    async def publish(
        self,
        routed: Sequence[tuple[Destination, TraceItem]],
        db_path: str,
        layout: str,
        watermark: Watermark,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> int:
        """Publish what is new among ``routed`` and store ``watermark``; returns events sent.

        ``extra`` fields are written into the watermark hash in the same transaction.
        """
        keys = [dedup_key(d.workspace_hash, i.dedup_id) for d, i in routed]
        seen: list[int] = []
        for start in range(0, len(keys), CHUNK):
            seen.extend(await self._exists_each(keys[start : start + CHUNK]))
        fresh = [(d, i, k) for (d, i), k, s in zip(routed, keys, seen, strict=True) if not s]
        # Items repeated within one batch (e.g. an id listed twice) are sent once.
        unique: dict[str, tuple[Destination, TraceItem]] = {}
        for d, i, k in fresh:
            unique.setdefault(k, (d, i))
        entries = list(unique.items())
        wm_json = json.dumps(watermark, separators=(",", ":"))
        fields = {layout: wm_json, **(extra or {})}
        if not entries:
            await self.redis.hset(watermark_key(db_path), mapping=fields)
            return 0
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start : start + CHUNK]
            async with self.redis.pipeline(transaction=True) as pipe:
                for key, (dest, item) in chunk:
                    pipe.xadd(self.stream, self.build_event(dest, item).to_fields())
                    pipe.set(key, b"1", ex=self.dedup_ttl_s)
                if start + CHUNK >= len(entries):
                    pipe.hset(watermark_key(db_path), mapping=fields)
                await pipe.execute()
        return len(entries)

    async def set_watermark_fields(self, db_path: str, fields: Mapping[str, str]) -> None:
        await self.redis.hset(watermark_key(db_path), mapping=dict(fields))

    async def reset_watermarks(self, db_path: str) -> None:
        """Forget where a database was read up to (a new file): it is read from the start."""
        await self.redis.delete(watermark_key(db_path))

    async def _exists_each(self, keys: list[str]) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [int(x) for x in await pipe.execute()]
