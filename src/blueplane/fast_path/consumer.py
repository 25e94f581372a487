"""FastPathConsumer: the stream into the local store, exactly once, never blocking on bad input.

Reads ``telemetry:events`` through a consumer group: after a (re)start it first drains its own
pending entries, then reads new ones, and claims with ``XAUTOCLAIM`` (page by page) whatever any
consumer left pending longer than ``claim_idle_ms``. Each batch is written to the store in one
transaction and acknowledged (one ``XACK``) only after the commit. An entry that cannot be
parsed goes to the capped dead-letter stream with the reason (in the same transaction as the
acknowledgement), so it is never redelivered forever.

A store that cannot be written (locked, full, corrupt) does not stop the server: the batch is
kept pending and retried with a capped backoff, the error shows in ``status`` and is logged
once a minute, and the consumer resumes when the store works again. Trimming the stream is the
``StreamTrimmer``'s job (it runs whether or not the consumer does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from blueplane.aio import Backoff, or_stop, sleep_or_stop, wait_any
from blueplane.broker import REDIS_DOWN
from blueplane.config import FastPathConfig
from blueplane.events import MalformedEntry, iso_now, parse_iso_ms
from blueplane.health import Health
from blueplane.store import StoredEvent, TraceStore, WriteResult

log = logging.getLogger("blueplane.fast_path")

EXTENSION_SOURCE = "extension"  # the TypeScript monitor of the Cursor extension

MAX_ENTRY_BYTES = 1_048_576  # an entry larger than this is dead-lettered, not stored
MAX_BACKOFF_S = 10.0  # while Redis is away: the store trails the stream by at most this
STORE_LOG_EVERY_S = 60.0  # an unusable store is one log line per minute, not one per retry
DEAD_LETTER_FIELD_CAP = 65536  # characters kept of each field in a dead letter's copy
# Longest wait for a catch-up of the publisher in this process before reading one batch anyway
# (see FastPathConsumer._yield_to_catch_up).
CATCH_UP_MAX_DEFER_S = 5.0
# Entries per read while the store catches up after such a wait: a first sync's backlog read
# in batch_size (2000) batches, two in memory at once, raised the server's peak RSS by ~27 MB
# (bench_live: peak 102 MB against 75 MB with 500; the store ~15 % slower to catch up).
CATCH_UP_BATCH = 500
_INT64 = (-(2**63), 2**63 - 1)
_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError


class _Stopping(Exception):
    """Stop was requested while a batch waited for the store: leave it pending."""


@dataclass(frozen=True)
class Rejected:
    stream_id: str
    reason: str
    fields: dict[str, str]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _decode_all(fields: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """All fields as text; the fast path (bytes from Redis) is one comprehension.

    ``fields``: a dict, or XREADGROUP's raw reply of one entry (field, value, field, value…),
    decoded straight into one dict of text (no dict of bytes first: 20 k entries/s)."""
    try:
        if type(fields) is list:
            if len(fields) % 2:
                raise MalformedEntry(f"entry has {len(fields)} field names and values, not pairs")
            it = iter(fields)
            try:
                return {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
            except AttributeError:  # text (decode_responses clients)
                it = iter(fields)
                fields = dict(zip(it, it, strict=True))
        else:
            try:
                return {k.decode(): v.decode() for k, v in fields.items()}
            except AttributeError:
                pass
        # text (decode_responses clients, tests)
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in fields.items()
        }
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"field is not UTF-8: {exc}") from exc


def _json_object(name: str, text: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, by orjson (4x the standard library's speed here).

    orjson is strict JSON: what only the standard library reads (``NaN``, ``Infinity``, a lone
    surrogate escape; ``json.dumps`` writes the first two) is read by it, as before, and so is
    the error message of what neither reads. orjson reads an integer beyond 64 bits as a float
    (the standard library: an int that SQLite cannot bind either); the stored text is the
    entry's own either way."""
    try:
        value = _loads(text)
    except _OrjsonError:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MalformedEntry(f"'{name}' is not valid JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(value, dict):
        raise MalformedEntry(f"'{name}' is a JSON {type(value).__name__}, not an object")
    return value


def parse_entry(stream_id: str, fields: dict[Any, Any] | list[Any]) -> StoredEvent:
    """One stream entry to a StoredEvent; MalformedEntry says precisely what is wrong.

    ``fields``: the entry's fields as a dict, or as XREADGROUP's raw reply gives them (a
    list: field, value, field, value…).

    One pass over the fields, JSON parsed once; the JSON text is kept so the store writes it
    as is (this runs for every event: at 20 k events/s, per-entry work is the budget, hence
    the plain code: no helper call or keyword argument that is not needed).
    """
    size = (
        sum(map(len, fields))
        if type(fields) is list
        else sum(map(len, fields)) + sum(map(len, fields.values()))
    )
    if size > MAX_ENTRY_BYTES:
        raise MalformedEntry(f"entry is {size} bytes, over the {MAX_ENTRY_BYTES} byte limit")
    data = _decode_all(fields)
    get = data.get
    payload_json = get("payload")
    metadata_json = get("metadata")
    payload = {} if payload_json is None else _json_object("payload", payload_json)
    metadata = {} if metadata_json is None else _json_object("metadata", metadata_json)
    event_type = get("event_type")
    if not event_type:
        raise MalformedEntry("missing 'event_type'")
    pget = payload.get
    session_id: Any = get("session_id") or pget("session_id") or None
    source = metadata.get("source")
    trace_type = generation_id = item_key = None
    revision = 0
    if event_type == "database_trace":
        trace_type = pget("trace_type")
        generation_id = pget("generation_id")
        if source is None and "version" not in data:
            # The TypeScript monitor's shape (typescript-monitor-events.md): no ``source``, no
            # ``version``, its session in ``external_session_id``, older builds in camelCase.
            source = EXTENSION_SOURCE
            session_id = session_id or get("external_session_id") or None
            trace_type = trace_type or pget("traceType")
            generation_id = generation_id or pget("generationId")
            if "workspace_hash" not in metadata and "workspaceHash" in metadata:
                metadata["workspace_hash"] = metadata["workspaceHash"]
        if not (
            type(trace_type) is str
            and trace_type
            and type(generation_id) is str
            and generation_id
            and type(session_id) is str
            and session_id
        ):
            _require_strings(trace_type, generation_id, session_id)
        item = pget("item_id") or generation_id
        item_key = item if type(item) is str else str(item)
        rev = pget("revision", 0)
        if type(rev) is not int:
            rev = _revision(rev)
        elif not _INT64[0] <= rev <= _INT64[1]:
            raise MalformedEntry("'payload.revision' is outside the 64-bit integer range")
        revision = rev
    elif session_id is not None and not isinstance(session_id, str):
        raise MalformedEntry("'session_id' is not a string")
    timestamp = get("timestamp")
    workspace = metadata.get("workspace_hash") or pget("workspace_hash")
    machine = metadata.get("machine_id")
    user = metadata.get("user")
    # Positional, in StoredEvent's field order: keywords cost 2 us of the per-event budget.
    return StoredEvent(
        get("event_id") or f"stream:{stream_id}",  # event_id
        stream_id,
        event_type,
        get("hook_type"),
        get("platform"),
        trace_type,
        session_id,
        workspace if isinstance(workspace, str) else None,  # workspace_hash
        generation_id,
        item_key,
        revision,
        timestamp,
        _timestamp_ms(timestamp),
        payload,
        metadata,
        payload_json,
        metadata_json,
        machine if isinstance(machine, str) else None,  # machine_id
        user if isinstance(user, str) else None,  # user_name
        source if isinstance(source, str) else None,
    )


def _require_strings(trace_type: Any, generation_id: Any, session_id: Any) -> None:
    """A database_trace without one of its identifying strings: say which."""
    required = (
        ("payload.trace_type", trace_type),
        ("payload.generation_id", generation_id),
        ("session_id", session_id),
    )
    for name, value in required:
        if not isinstance(value, str) or not value:
            raise MalformedEntry(f"database_trace without a string '{name}'")


def _revision(rev: Any) -> int:
    """``payload.revision`` that is not a plain int: None is 0, anything else is malformed."""
    if rev is None:
        return 0
    if isinstance(rev, float) and rev.is_integer() and abs(rev) >= 2**63:
        # orjson reads an integer beyond 64 bits as a float (see _json_object)
        raise MalformedEntry("'payload.revision' is outside the 64-bit integer range")
    if not isinstance(rev, int) or isinstance(rev, bool):
        raise MalformedEntry(f"'payload.revision' is {type(rev).__name__}, not an integer")
    if not _INT64[0] <= rev <= _INT64[1]:
        raise MalformedEntry("'payload.revision' is outside the 64-bit integer range")
    return int(rev)


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
    if seconds != seconds or abs(seconds) > 1e15:  # NaN, inf, absurd: no time rather than crash
        return None
    return int(seconds * 1000) if seconds < 1e11 else int(seconds)


class FastPathConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        config: FastPathConfig,
        stream: str,
        store: TraceStore,
        dedup_window_s: float,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
        catch_up: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis
        # The same connections, but XREADGROUP's reply as the parser (hiredis) gives it: redis-py's
        # own parsing builds a list of (id, dict) for it that ``_prepare`` would only walk again
        # (~4 us per entry, with hiredis ~2: see ``_entries``).
        self._reader = aioredis.Redis(connection_pool=redis.connection_pool)
        self._reader.set_response_callback("XREADGROUP", _raw_reply)
        # Seconds a catch-up of the publisher of this process is still expected to last.
        self.catch_up = catch_up
        self._catch_up_batch: int | None = None  # entries per read after one (see there)
        self.cfg = config
        self.stream = stream
        self.store = store
        self.dedup_window_s = dedup_window_s
        self.health = health.component("fast_path_consumer")
        self.clock = clock
        self._stop = asyncio.Event()  # run() replaces it with the server's
        self._drained = False
        self._last_claim = 0.0
        self._pipelined = False
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_on_exit: asyncio.Future[None] | None = None
        self._halt = asyncio.Event()
        self._group_ready = False
        self._store_down_since: float | None = None
        self._store_last_log = 0.0
        self._store_attempts = 0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.cfg.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.cfg.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; no Redis or store error ends it (each is retried)."""
        self._stop = stop
        self._halt = asyncio.Event()
        self._pipelined = True
        try:
            await self._run(stop)
        finally:
            self._pipelined = False
            self._halt.set()  # a batch waiting for the store gives up (stays pending)
            task, self._inflight = self._inflight or self._inflight_on_exit, None
            if task is not None:  # its write cannot be stopped; its ack is worth keeping
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, _Stopping):
                        log.warning("fast path: last batch not acknowledged at stop: %s", exc)

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(1.0, MAX_BACKOFF_S)
        while not stop.is_set():
            try:
                if not self._group_ready:
                    await self.ensure_group()
                    self._group_ready = True
                await self.step(block_ms=self.cfg.block_ms)
                if self._store_down_since is None:
                    self.health.status = "ok"
                backoff.reset()
            except _Stopping:
                return
            except REDIS_DOWN as exc:
                self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
                delay = backoff.next()
                log.warning("fast path: Redis unavailable (%s); retrying in %.0f s", exc, delay)
                self._drained = False  # re-drain our pending entries after reconnecting
                self._group_ready = False
                await sleep_or_stop(stop, delay)
            except ResponseError as exc:
                self._group_ready = False
                if "NOGROUP" in str(exc):  # stream or group deleted under us: recreate
                    self._drained = False
                    continue
                # e.g. OOM under maxmemory, READONLY replica: an answer, not a crash
                self.health.fail("redis_error", f"Redis refused a command: {exc}")
                delay = backoff.next()
                log.error("fast path: Redis refused a command (%s); retrying in %.0f s", exc,
                          delay)  # fmt: skip
                self._drained = False
                await sleep_or_stop(stop, delay)

    async def step(self, block_ms: int | None = None) -> int:
        """Drain pending first, then claim stale, then read new; returns entries handled.

        Called alone (tests), everything read is stored and acknowledged when it returns; inside
        run(), the last batch may still be in flight.
        """
        try:
            return await self._step(block_ms)
        finally:
            if not self._pipelined:
                await self._flush()

    async def _step(self, block_ms: int | None) -> int:
        if not self._drained:
            n = await self._read("0", None)
            if n == 0:
                self._drained = True
            return n
        await self._yield_to_catch_up()
        now = self.clock()
        handled = 0
        if now - self._last_claim >= self.cfg.claim_idle_ms / 2000:
            self._last_claim = now
            handled += await self._claim_stale()
        n = await self._read(">", None if self._inflight is not None else block_ms)
        if n == 0 and self._inflight is not None:
            await self._flush()  # caught up: finish the last batch before blocking
        return handled + n

    async def _yield_to_catch_up(self) -> None:
        """While this process's publisher catches up (a first sync), do not read.

        Publisher and consumer share one GIL: reading, parsing and storing at the same time
        slows the publication down as much as it costs. The stream holds the entries meanwhile
        (the trimmer never removes unread ones) and the store takes them right after, in full
        batches. At most ``CATCH_UP_MAX_DEFER_S`` per read, so a long catch-up still moves the
        store on.
        """
        if self.catch_up is None:
            return
        deadline = self.clock() + CATCH_UP_MAX_DEFER_S
        while not self._stop.is_set():
            wait = min(self.catch_up(), deadline - self.clock())
            if wait <= 0:
                return
            # What piled up meanwhile is read in CATCH_UP_BATCH batches until a read comes
            # back short (caught up): memory stays low for the same store speed.
            self._catch_up_batch = min(self.cfg.batch_size, CATCH_UP_BATCH)
            await wait_any([self._stop], wait)

    async def _read(self, start: str, block_ms: int | None) -> int:
        if start == "0":
            await self._flush()  # "0" re-reads what is unacknowledged: the batch in flight too
        count = self._catch_up_batch or self.cfg.batch_size
        read = self._reader.xreadgroup(
            self.cfg.group, self.cfg.consumer, {self.stream: start},
            count=count, block=block_ms,
        )  # fmt: skip
        # A blocking read is given up on stop (what Redis handed over meanwhile stays pending,
        # re-read at the next start): a long block_ms costs few idle round-trips, no stop delay.
        resp = await (read if block_ms is None else or_stop(read, self._stop))
        entries = _entries(resp)
        if len(entries) < count:
            self._catch_up_batch = None
        if not entries:
            return 0
        too_many = await self._over_delivered(entries) if start == "0" else set()
        await self._submit(entries, too_many)
        return len(entries)

    async def _claim_stale(self) -> int:
        """Take over everything idle longer than ``claim_idle_ms``, from any consumer.

        XAUTOCLAIM returns a cursor: follow it page by page until it comes back to 0-0.
        """
        await self._flush()  # never claim our own batch in flight
        cursor = "0-0"
        total = 0
        while True:
            result = await self.redis.xautoclaim(
                self.stream, self.cfg.group, self.cfg.consumer,
                min_idle_time=self.cfg.claim_idle_ms, start_id=cursor, count=self.cfg.batch_size,
            )  # fmt: skip
            cursor = _text(result[0])
            entries = result[1] if len(result) > 1 else []
            deleted = result[2] if len(result) > 2 else []
            if deleted:  # trimmed or deleted while pending: nothing left to store
                await self.redis.xack(self.stream, self.cfg.group, *deleted)
            if entries:
                await self._submit(entries, await self._over_delivered(entries))
                total += len(entries)
            if cursor in ("0-0", "0"):
                break
        if total:
            log.info("claimed %d entr(ies) left pending by a stalled consumer", total)
            self.health.count("claimed", total)
        return total

    async def _over_delivered(self, entries: list[tuple[Any, Any]]) -> set[str]:
        """Ids among ``entries`` (all pending for us now) delivered too often."""
        ids = [_text(e[0]) for e in entries]
        info = await self.redis.xpending_range(
            self.stream, self.cfg.group, min=ids[0], max=ids[-1],
            count=len(ids) + self.cfg.batch_size, consumername=self.cfg.consumer,
        )  # fmt: skip
        wanted = set(ids)
        return {
            mid
            for p in info
            if int(p["times_delivered"]) > self.cfg.max_deliveries
            and (mid := _text(p["message_id"])) in wanted
        }

    async def handle(
        self, entries: list[tuple[Any, Any]], too_many: set[str] | None = None
    ) -> None:
        """Store, dead-letter and acknowledge one batch; ack only after the store's commit."""
        await self._finish(*self._prepare(entries, too_many))

    async def _submit(self, entries: list[tuple[Any, Any]], too_many: set[str]) -> None:
        """Parse this batch now (the previous one may still be writing), then let it finish.

        At most one batch is in flight: its store write (in a thread) overlaps the reading and
        parsing of the next one, which is where the second core earns its keep. Batches are
        acknowledged in order, each only after its commit.
        """
        prepared = self._prepare(entries, too_many)
        await self._flush()
        self._inflight = asyncio.ensure_future(self._finish(*prepared))
        if not self._pipelined:
            await self._flush()

    async def _flush(self) -> None:
        """Wait for the batch in flight (its errors are raised here)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            # shielded: if run() is cancelled here, the batch still commits and is acknowledged
            # (run() waits for it on its way out)
            self._inflight_on_exit = task
            await asyncio.shield(task)
            self._inflight_on_exit = None

    def _prepare(
        self, entries: list[tuple[Any, Any]], too_many: set[str] | None
    ) -> tuple[Sequence[StoredEvent], list[Rejected], list[Any]]:
        good: list[StoredEvent] = []
        bad: list[Rejected] = []
        ids: list[Any] = []
        for raw_id, fields in entries:
            ids.append(raw_id)
            if not fields:
                continue  # entry deleted from the stream while pending: just acknowledge
            # ``fields``: XREADGROUP's raw reply (field, value, …; parse_entry reads it as is),
            # or a dict (XAUTOCLAIM)
            sid = _text(raw_id)
            if too_many and sid in too_many:
                reason = f"delivered more than {self.cfg.max_deliveries} times without being stored"
                bad.append(Rejected(sid, reason, _copy(fields)))
                continue
            try:
                good.append(parse_entry(sid, fields))
            except MalformedEntry as exc:
                bad.append(Rejected(sid, str(exc), _copy(fields)))
        # What of the write needs no database, done here too: the writer thread, which has
        # to win the GIL back from this loop for every Python step, then runs only SQL.
        return self.store.prepare(good), bad, ids

    async def _finish(
        self, good: Sequence[StoredEvent], bad: list[Rejected], ids: list[Any]
    ) -> None:
        if good:
            result = await self._store(good)
            self.health.count("stored", result.inserted)
            self.health.count("duplicates_dropped", result.duplicates)
        async with self.redis.pipeline(transaction=True) as pipe:
            for r in bad:
                pipe.xadd(
                    self.cfg.dead_letter_stream,
                    {
                        "reason": r.reason,
                        "original_id": r.stream_id,
                        "original_stream": self.stream,
                        "fields": json.dumps(r.fields, ensure_ascii=False),
                        "rejected_at": iso_now(),
                        **({"truncated": "1"} if _cut(r.fields) else {}),
                    },
                    maxlen=self.cfg.dead_letter_max_length,
                    approximate=True,
                )
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

    async def _store(self, events: Sequence[StoredEvent]) -> WriteResult:
        """Write until the store takes the batch; raise _Stopping if stop comes first.

        The entries stay pending (not acknowledged) meanwhile. The batch is kept in memory and
        retried as is, so a long outage does not raise their delivery count.
        """
        backoff = Backoff(self.cfg.store_retry_initial_seconds, self.cfg.store_retry_max_seconds)
        while True:
            try:
                result = await self._write(events)
            except self.store.errors as exc:
                delay = backoff.next()
                self._store_failed(exc, len(events), delay)
                await wait_any([self._stop, self._halt], delay)
                if self._stop.is_set() or self._halt.is_set():
                    raise _Stopping from exc
                continue
            if self._store_down_since is not None:
                log.warning(
                    "fast path: store %s writable again after %.0f s and %d failed attempt(s)",
                    self.store.label, self.clock() - self._store_down_since, self._store_attempts,
                )  # fmt: skip
                self._store_down_since = None
                self._store_attempts = 0
                self.health.status = "ok"
            return result

    async def _write(self, events: Sequence[StoredEvent]) -> WriteResult:
        """``write_batch`` in a worker thread, which is always let finish.

        A thread cannot be cancelled: if this task is, wait for the thread anyway, so nobody
        closes the store under a running write (the server closes it after tasks stop).
        """
        fut = asyncio.ensure_future(
            asyncio.to_thread(self.store.write_batch, events, self.dedup_window_s)
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait({fut})
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("fast path: write in flight at cancellation failed: %s",
                            fut.exception())  # fmt: skip
            raise

    def _store_failed(self, exc: BaseException, n: int, retry_in: float) -> None:
        now = self.clock()
        self._store_attempts += 1
        self.health.count("store_errors")
        self.health.fail("store_unavailable", f"cannot write the store {self.store.label}: {exc}")
        if self._store_down_since is None:
            self._store_down_since = now
            self._store_last_log = now - STORE_LOG_EVERY_S
        if now - self._store_last_log >= STORE_LOG_EVERY_S:
            self._store_last_log = now
            log.error(
                "fast path: cannot write the store %s: %s (%s); %d entries kept pending, "
                "failing for %.0f s, %d attempt(s), next in %.1f s",
                self.store.label, exc, type(exc).__name__, n, now - self._store_down_since,
                self._store_attempts, retry_in,
            )  # fmt: skip


def _raw_reply(response: Any, **options: Any) -> Any:
    """XREADGROUP's reply as read (``FastPathConsumer._reader``)."""
    return response


def _entries(resp: Any) -> list[Any]:
    """The entries of a raw XREADGROUP reply on one stream: ``[id, [field, value, …]]`` each
    (``[id, None]`` for one deleted while pending). RESP2 gives ``[[stream, entries]]``,
    RESP3 ``{stream: entries}``; no entries (a block that timed out): None."""
    if not resp:
        return []
    if isinstance(resp, dict):
        return next(iter(resp.values())) or []
    return resp[0][1] or []


def _cut(fields: dict[str, str]) -> bool:
    return any(len(v) >= DEAD_LETTER_FIELD_CAP for v in fields.values())


def _copy(fields: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """The dead letter's copy of an entry: text, each value capped."""
    if type(fields) is list:  # raw reply: field, value, … (an odd last name gets "")
        it = iter([*fields, b""] if len(fields) % 2 else fields)
        fields = dict(zip(it, it, strict=True))
    return {_text(k): _text(v)[:DEAD_LETTER_FIELD_CAP] for k, v in fields.items()}


# At most this many entries are counted to find a group's lag on a server that does not report
# it (Redis < 7, e.g. the bundled 6.2).
LAG_COUNT_CAP = 100_000


async def count_after(redis: aioredis.Redis, stream: str, last_id: bytes | str) -> int:
    """Entries after ``last_id`` (capped), for servers that do not report a group's lag."""
    start = "(" + (last_id.decode() if isinstance(last_id, bytes) else str(last_id))
    entries = await redis.xrange(stream, min=start, max="+", count=LAG_COUNT_CAP)
    return len(entries)


async def group_stats(redis: aioredis.Redis, stream: str, group: str) -> dict[str, int | None]:
    """``pending`` and ``consumer_lag`` of the consumer group ``group`` on ``stream``; empty
    when the stream or the group does not exist (yet)."""
    if not (await redis.xlen(stream) or await redis.exists(stream)):
        return {}
    stats: dict[str, int | None] = {}
    for g in await redis.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            stats["pending"] = int(g["pending"])
            lag = g.get("lag")
            if lag is None:  # Redis < 7 does not report it (the bundled 6.2): count it
                lag = await count_after(redis, stream, g["last-delivered-id"])
            stats["consumer_lag"] = int(lag) if lag is not None else None
    return stats


async def consumer_stats(
    redis: aioredis.Redis, stream: str, group: str, now_ms: int | None = None
) -> list[dict[str, Any]]:
    """Each consumer of ``group``: its pending entries, idle time, and lag (age of its oldest
    pending entry, ms); empty when the stream or group does not exist."""
    try:
        consumers = await redis.xinfo_consumers(stream, group)
    except ResponseError:  # no such key or group
        return []
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    for c in consumers:
        name = _text(c["name"])
        pending = int(c["pending"])
        row: dict[str, Any] = {
            "name": name, "pending": pending, "idle_ms": int(c["idle"]),
            "oldest_pending_age_ms": None,
        }  # fmt: skip
        if "inactive" in c and c["inactive"] is not None:
            row["inactive_ms"] = int(c["inactive"])
        if pending:
            first = await redis.xpending_range(
                stream, group, min="-", max="+", count=1, consumername=name
            )
            if first:
                ms = int(_text(first[0]["message_id"]).partition("-")[0])
                row["oldest_pending_age_ms"] = max(0, now - ms)
        out.append(row)
    return out
