"""FastPathConsumer: the stream into the local store, exactly once, never blocking on bad input.

Reads ``telemetry:events`` through a consumer group: after a (re)start it first drains its own
pending entries, then reads new ones, and claims with ``XAUTOCLAIM`` what a dead consumer left
pending. Each batch is written to the store in one transaction and acknowledged only after the
commit. An entry that cannot be parsed goes to the dead-letter stream with the reason (and is
acknowledged in the same transaction), so it is never redelivered forever. Trimming never removes
an entry that a consumer group has not acknowledged or the session monitor has not read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from blueplane.aio import sleep_or_stop
from blueplane.broker import REDIS_DOWN
from blueplane.config import FastPathConfig
from blueplane.cursor.session_monitor import POSITION_KEY
from blueplane.events import MalformedEntry, decode_fields, iso_now, parse_iso_ms
from blueplane.health import Health
from blueplane.store import StoredEvent, TraceStore

log = logging.getLogger("blueplane.fast_path")

MAX_ENTRY_BYTES = 1_048_576  # an entry larger than this is dead-lettered, not stored
TRIM_EVERY_S = 10.0
MAX_BACKOFF_S = 10.0  # while Redis is away: the store trails the stream by at most this
MAX_TRIM_STEP = 10_000


@dataclass(frozen=True)
class Rejected:
    stream_id: str
    reason: str
    fields: dict[str, str]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def parse_entry(stream_id: str, fields: dict[Any, Any]) -> StoredEvent:
    """One stream entry to a StoredEvent; MalformedEntry says precisely what is wrong."""
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > MAX_ENTRY_BYTES:
        raise MalformedEntry(f"entry is {size} bytes, over the {MAX_ENTRY_BYTES} byte limit")
    data = decode_fields(fields)
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEntry("missing 'event_type'")
    payload = data.get("payload", {})
    metadata = data.get("metadata", {})
    if not isinstance(payload, dict):
        raise MalformedEntry(f"'payload' is a JSON {type(payload).__name__}, not an object")
    if not isinstance(metadata, dict):
        raise MalformedEntry(f"'metadata' is a JSON {type(metadata).__name__}, not an object")
    session_id = data.get("session_id") or payload.get("session_id") or None
    trace_type = generation_id = item_key = None
    revision = 0
    if event_type == "database_trace":
        trace_type = payload.get("trace_type")
        generation_id = payload.get("generation_id")
        required = (
            ("payload.trace_type", trace_type),
            ("payload.generation_id", generation_id),
            ("session_id", session_id),
        )
        for name, value in required:
            if not isinstance(value, str) or not value:
                raise MalformedEntry(f"database_trace without a string '{name}'")
        item = payload.get("item_id") or generation_id
        item_key = str(item)
        rev = payload.get("revision", 0)
        if rev is None:
            rev = 0
        if not isinstance(rev, int) or isinstance(rev, bool):
            raise MalformedEntry(f"'payload.revision' is {type(rev).__name__}, not an integer")
        revision = rev
    if session_id is not None and not isinstance(session_id, str):
        raise MalformedEntry("'session_id' is not a string")
    timestamp = data.get("timestamp")
    ts_ms = _timestamp_ms(timestamp)
    workspace = metadata.get("workspace_hash") or payload.get("workspace_hash")
    event_id = data.get("event_id") or f"stream:{stream_id}"
    return StoredEvent(
        event_id=str(event_id),
        stream_id=stream_id,
        event_type=event_type,
        hook_type=data.get("hook_type"),
        platform=data.get("platform"),
        trace_type=trace_type,
        session_id=session_id,
        workspace_hash=workspace if isinstance(workspace, str) else None,
        generation_id=generation_id,
        item_key=item_key,
        revision=revision,
        timestamp=timestamp if isinstance(timestamp, str) else None,
        timestamp_ms=ts_ms,
        payload=payload,
        metadata=metadata,
    )


def _timestamp_ms(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso_ms(value)
    except ValueError:
        pass
    try:  # the proposal sent time.time() seconds as text
        seconds = float(value)
    except ValueError:
        return None
    return int(seconds * 1000) if seconds < 1e11 else int(seconds)


def _successor(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class FastPathConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        config: FastPathConfig,
        stream: str,
        store: TraceStore,
        dedup_window_s: float,
        health: Health,
    ) -> None:
        self.redis = redis
        self.cfg = config
        self.stream = stream
        self.store = store
        self.dedup_window_s = dedup_window_s
        self.health = health.component("fast_path_consumer")
        self._drained = False
        self._last_trim = 0.0
        self._last_claim = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.cfg.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.cfg.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                await self.ensure_group()
                await self.step(block_ms=self.cfg.block_ms)
                self.health.status = "ok"
                backoff = 1.0
            except REDIS_DOWN as exc:
                self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
                log.warning("fast path: Redis unavailable (%s); retrying in %.0f s", exc, backoff)
                self._drained = False  # re-drain our pending entries after reconnecting
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # stream or group deleted under us: recreate
                    self._drained = False
                    continue
                raise

    async def step(self, block_ms: int | None = None) -> int:
        """Drain pending first, then claim stale, then read new; returns entries handled."""
        if not self._drained:
            n = await self._read("0", None)
            if n == 0:
                self._drained = True
            return n
        now = time.monotonic()
        handled = 0
        if now - self._last_claim >= self.cfg.claim_idle_ms / 2000:
            self._last_claim = now
            handled += await self._claim_stale()
        handled += await self._read(">", block_ms)
        if now - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = now
            await self.trim()
        return handled

    async def _read(self, start: str, block_ms: int | None) -> int:
        resp = await self.redis.xreadgroup(
            self.cfg.group, self.cfg.consumer, {self.stream: start},
            count=self.cfg.batch_size, block=block_ms,
        )  # fmt: skip
        if not resp:
            return 0
        entries = resp[0][1]
        if not entries:
            return 0
        too_many = await self._over_delivered(entries) if start == "0" else set()
        await self.handle(entries, too_many)
        return len(entries)

    async def _claim_stale(self) -> int:
        """Take over entries another (dead) consumer left pending for too long."""
        result = await self.redis.xautoclaim(
            self.stream, self.cfg.group, self.cfg.consumer,
            min_idle_time=self.cfg.claim_idle_ms, start_id="0-0", count=self.cfg.batch_size,
        )  # fmt: skip
        entries = result[1] if len(result) > 1 else []
        deleted = result[2] if len(result) > 2 else []
        if deleted:
            await self.redis.xack(self.stream, self.cfg.group, *deleted)
        if entries:
            log.info("claimed %d entr(ies) left pending by another consumer", len(entries))
            await self.handle(entries, await self._over_delivered(entries))
        return len(entries)

    async def _over_delivered(self, entries: list[tuple[Any, Any]]) -> set[str]:
        ids = [_text(e[0]) for e in entries]
        info = await self.redis.xpending_range(
            self.stream, self.cfg.group, min=ids[0], max=ids[-1], count=len(ids) + 10
        )
        return {
            _text(p["message_id"])
            for p in info
            if int(p["times_delivered"]) > self.cfg.max_deliveries
        }

    async def handle(
        self, entries: list[tuple[Any, Any]], too_many: set[str] | None = None
    ) -> None:
        good: list[StoredEvent] = []
        bad: list[Rejected] = []
        ids: list[str] = []
        for raw_id, fields in entries:
            sid = _text(raw_id)
            ids.append(sid)
            if not fields:
                continue  # entry deleted from the stream while pending: just acknowledge
            text_fields = {_text(k): _text(v)[:65536] for k, v in fields.items()}
            if too_many and sid in too_many:
                bad.append(Rejected(sid, f"delivered more than {self.cfg.max_deliveries} times "
                                         "without being stored", text_fields))  # fmt: skip
                continue
            try:
                good.append(parse_entry(sid, fields))
            except MalformedEntry as exc:
                bad.append(Rejected(sid, str(exc), text_fields))
        if good:
            result = await asyncio.to_thread(self.store.write_batch, good, self.dedup_window_s)
            self.health.count("stored", result.inserted)
            self.health.count("duplicates_dropped", result.duplicates)
        async with self.redis.pipeline(transaction=True) as pipe:
            for r in bad:
                pipe.xadd(self.cfg.dead_letter_stream, {
                    "reason": r.reason, "original_id": r.stream_id, "original_stream": self.stream,
                    "fields": json.dumps(r.fields, ensure_ascii=False), "rejected_at": iso_now(),
                })  # fmt: skip
            pipe.xack(self.stream, self.cfg.group, *ids)
            await pipe.execute()
        for r in bad:
            log.error(
                "stream entry %s moved to %s: %s",
                r.stream_id,
                self.cfg.dead_letter_stream,
                r.reason,
            )
            self.health.count("dead_lettered")
            self.health.last_error = f"entry {r.stream_id}: {r.reason}"
            self.health.last_error_at = iso_now()

    async def safe_trim_id(self) -> str | None:
        """Lowest id every reader still needs; entries below it may go."""
        needed: list[str] = []
        for group in await self.redis.xinfo_groups(self.stream):
            last = _text(group["last-delivered-id"])
            needed.append(_successor(last))
            if int(group["pending"]):
                summary = await self.redis.xpending(self.stream, _text(group["name"]))
                if summary.get("min"):
                    needed.append(_text(summary["min"]))
        pos = await self.redis.get(POSITION_KEY)
        needed.append(_successor(_text(pos)) if pos else "0-1")
        return min(needed, key=_id_key) if needed else None

    async def trim(self) -> int:
        """Trim to ``max_stream_length`` but never past what a reader still needs."""
        length = await self.redis.xlen(self.stream)
        excess = length - self.cfg.max_stream_length
        if excess <= 0:
            return 0
        safe = await self.safe_trim_id()
        if safe is None:
            return 0
        step = min(excess, MAX_TRIM_STEP)
        head = await self.redis.xrange(self.stream, "-", "+", count=step + 1)
        target = _text(head[-1][0]) if len(head) > step else _successor(_text(head[-1][0]))
        minid = min(target, safe, key=_id_key)
        removed = int(await self.redis.xtrim(self.stream, minid=minid))
        if removed:
            self.health.count("trimmed", removed)
        return removed
