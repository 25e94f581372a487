"""Deduplication and publication: XADD of new traces, atomic with the watermark they advance.

Check and publication are one step: a Lua script run per chunk of events does, for each
event, ``SET dedupkey 1 NX EX ttl`` (key ``(workspace_hash, item id)``, TTL = the dedup window)
and an ``XADD`` of only the events whose key was new, then, with the last chunk, an ``HSET`` of
the layout's watermark (and any extra fields). Redis runs a script alone, so two publishers — a
workspace task and the global task emitting the same id, or two processes — cannot both see an
item as new: an event is on the stream iff its dedup key is set. A crash between chunks leaves
the watermark behind: the restart re-reads, and the dedup keys stop the repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from blueplane.cursor.layouts.base import TraceItem, Watermark
from blueplane.events import TRACE_VERSION, TraceEvent, TraceMetadata, iso_from_ms, iso_now
from blueplane.events.wire import WirePayload, model_json
from blueplane.keys import LEGACY, Keys

log = logging.getLogger("blueplane.publisher")

# Events per script run: one run of 250 ~1 KB events takes about 3 ms in Redis (other clients
# wait that long at most) while the round-trips stay few; see bench/bench_publish.py.
CHUNK = 250
META_CACHE_MAX = 4096
# A publication of at least this many items is a catch-up (a first sync, a backlog after an
# outage); the catch-up is taken to go on for CATCH_UP_HOLD_S after the last such one. Live
# edits publish a few items per read.
CATCH_UP_ITEMS = 64
CATCH_UP_HOLD_S = 0.5

# KEYS: stream, watermark hash, then one dedup key per event.
# ARGV: ttl; n watermark pairs, the pairs; n revision-memo pairs (key, value; written with
# the watermark, each with the dedup TTL), the pairs; the entry template: n fields, then per
# field its name
# and either "=" and the value all events of the chunk share, or "*" (a value per event); then
# one JSON array of every event's own values, event after event, in template order. Shared
# values travel once per chunk; the rest as one argument, which redis-py packs in one step
# instead of one per value (that packing was a tenth of a first sync's Python time).
# Types are checked before any write, so a wrong-typed key fails the run with nothing written;
# an XADD that fails anyway un-sets its own dedup key (a script is not rolled back).
PUBLISH_LUA = """
local stream, wmkey = KEYS[1], KEYS[2]
local t = redis.call('TYPE', stream)['ok']
if t ~= 'stream' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE stream key ' .. stream .. ' holds a ' .. t)
end
local nwm = tonumber(ARGV[2])
if nwm > 0 then
  t = redis.call('TYPE', wmkey)['ok']
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE watermark key ' .. wmkey .. ' holds a ' .. t)
  end
end
local ttl = ARGV[1]
local pos = 3 + 2 * nwm
local nmemo = tonumber(ARGV[pos])
local memo_at = pos + 1
pos = pos + 1 + 2 * nmemo
local nf = tonumber(ARGV[pos])
pos = pos + 1
local xargs = {stream, '*'}
local slots = {}
for j = 1, nf do
  xargs[2 * j + 1] = ARGV[pos]
  if ARGV[pos + 1] == '=' then
    xargs[2 * j + 2] = ARGV[pos + 2]
    pos = pos + 3
  else
    slots[#slots + 1] = 2 * j + 2
    pos = pos + 2
  end
end
local nv = #slots
local own = cjson.decode(ARGV[pos])
pos = 0
local sent = 0
for i = 3, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    for k = 1, nv do
      xargs[slots[k]] = own[pos + k]
    end
    local r = redis.pcall('XADD', unpack(xargs))
    if type(r) == 'table' and r['err'] then
      redis.call('DEL', KEYS[i])
      return redis.error_reply('XADD failed after ' .. sent .. ' events: ' .. r['err'])
    end
    sent = sent + 1
  end
  pos = pos + nv
end
if nwm > 0 then
  redis.call('HSET', wmkey, unpack(ARGV, 3, 2 + 2 * nwm))
end
for m = 0, nmemo - 1 do
  redis.call('SET', ARGV[memo_at + 2 * m], ARGV[memo_at + 2 * m + 1], 'EX', ttl)
end
return sent
"""

# The flat fields of a ``TraceEvent`` in ``to_fields()`` order (all are always present).
TRACE_FIELDS = (
    "version", "event_type", "hook_type", "platform", "event_id", "session_id",
    "external_session_id", "timestamp", "metadata", "payload",
)  # fmt: skip


@dataclass(frozen=True)
class Destination:
    """Where a workspace's traces go: its session and how it is described in metadata."""

    workspace_hash: str
    session_id: str
    workspace_path: str | None = None
    database_path: str | None = None
    storage_id: str | None = None


class Publisher:
    """Publishes traces exactly once and owns every write of the watermark hashes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        dedup_window_s: float,
        chunk: int = CHUNK,
        machine_id: str | None = None,
        user: str | None = None,
        keys: Keys = LEGACY,
    ) -> None:
        self.redis = redis
        # This install's key names (``redis.key_namespace``); the global database reads it too.
        self.keys = keys
        # In every event's metadata: which install and which person produced it.
        self.machine_id = machine_id
        self.user = user
        self.stream = stream
        self.dedup_ttl_s = max(1, int(dedup_window_s))
        self.chunk = max(1, chunk)
        # EVALSHA, loaded again by redis-py if the server lost it (NOSCRIPT after a restart).
        self._publish_script = redis.register_script(PUBLISH_LUA)
        self._meta_cache: dict[tuple[Destination, str | None], str] = {}
        self._catch_up_until = 0.0  # monotonic time; see catching_up()

    def catching_up(self) -> float:
        """Seconds the current catch-up is still expected to go on (0: none).

        The in-process consumer yields to it (``FastPathConsumer``): both share one GIL, and
        the stream holds what the store has not read yet.
        """
        return max(0.0, self._catch_up_until - time.monotonic())

    async def load_watermarks(self, db_path: str) -> dict[str, Watermark]:
        raw = await self.redis.hgetall(self.keys.watermark(db_path))
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

    async def load_revisions(
        self, db_path: str, layout: str, items: Sequence[str]
    ) -> dict[str, list[object]]:
        """The ``[hash, revision]`` last sent for each of ``items`` (absent: never sent)."""
        out: dict[str, list[object]] = {}
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            values = await self.redis.mget([self.keys.revision(db_path, layout, i) for i in chunk])
            for item, raw in zip(chunk, values, strict=True):
                if raw is None:
                    continue
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError:
                    log.error("revision memory of %s in %s is corrupt; ignored", item, db_path)
                    continue
                if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                    out[item] = value
        return out

    async def set_watermark_fields(self, db_path: str, fields: Mapping[str, str]) -> None:
        """Store fields of a database's watermark hash (e.g. its file marker) on their own."""
        if fields:
            await self.redis.hset(self.keys.watermark(db_path), mapping=dict(fields))

    async def reset_watermarks(self, db_path: str) -> None:
        """Forget where a database was read up to: it is read from the start, dedup skips."""
        await self.redis.delete(self.keys.watermark(db_path))

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
                machine_id=self.machine_id,
                user=self.user,
            ),
            payload=item.payload.to_json_dict(),
        )

    def event_values(
        self, dest: Destination, item: TraceItem, dedup_id: str | None = None
    ) -> tuple[str, ...]:
        """``build_event(dest, item).to_fields()`` values in ``TRACE_FIELDS`` order, fast.

        The first sync encodes every item: no envelope model is built, the metadata JSON is
        made once per destination and storage id, and a ``WirePayload``'s JSON is the one it
        already made (its content hash covered the same bytes).
        """
        storage_id = item.workspace_storage_id or dest.storage_id
        meta = self._meta_cache.get((dest, storage_id))
        if meta is None:
            meta = model_json(
                TraceMetadata(
                    workspace_hash=dest.workspace_hash, workspace_path=dest.workspace_path,
                    database_path=dest.database_path, storage_id=storage_id,
                    machine_id=self.machine_id, user=self.user,
                )
            )  # fmt: skip
            if len(self._meta_cache) >= META_CACHE_MAX:
                self._meta_cache.clear()
            self._meta_cache[(dest, storage_id)] = meta
        ts = iso_from_ms(item.timestamp_ms) if item.timestamp_ms else iso_now()
        payload = item.payload
        text = payload.json_text() if isinstance(payload, WirePayload) else model_json(payload)
        return (
            TRACE_VERSION, "database_trace", "DatabaseTrace", "cursor",
            TraceEvent.make_event_id(dest.workspace_hash, dedup_id or item.dedup_id),
            dest.session_id, dest.session_id, ts, meta, text,
        )  # fmt: skip

    async def publish(
        self,
        routed: Sequence[tuple[Destination, TraceItem]],
        db_path: str,
        layout: str,
        watermark: Watermark,
        extra: Mapping[str, str] | None = None,
        revisions: Mapping[str, list[object]] | None = None,
    ) -> int:
        """Publish what is new among ``routed`` and store ``watermark``; returns events sent.

        ``extra`` fields (e.g. the file marker) are written to the watermark hash in the same
        atomic step as ``watermark``, which rides on the last chunk; so do ``revisions``, the
        new ``[hash, revision]`` of items this read stamped (see ``load_revisions``).
        """
        wm_pairs: list[str] = [layout, json.dumps(watermark, separators=(",", ":"))]
        for name, value in (extra or {}).items():
            wm_pairs += [name, value]
        memo_pairs: list[str] = []
        for item, value in (revisions or {}).items():
            memo_pairs += [self.keys.revision(db_path, layout, item), json.dumps(value)]
        keys_fixed = [self.stream, self.keys.watermark(db_path)]
        sent = 0
        n = len(routed)
        if n >= CATCH_UP_ITEMS:
            self._catch_up_until = time.monotonic() + CATCH_UP_HOLD_S
        # Chunk k+1 is encoded while Redis runs chunk k; it is sent only once k succeeded, so
        # chunks apply in order and the watermark (last chunk) never precedes its events.
        running: asyncio.Future[int] | None = None
        try:
            for start in range(0, n, self.chunk) if n else range(1):
                chunk = routed[start : start + self.chunk]
                keys = list(keys_fixed)
                rows: list[tuple[str, ...]] = []
                for dest, item in chunk:
                    dedup_id = item.dedup_id
                    keys.append(self.keys.dedup(dest.workspace_hash, dedup_id))
                    rows.append(self.event_values(dest, item, dedup_id))
                args: list[str | int | bytes] = [self.dedup_ttl_s]
                if start + self.chunk >= n:
                    args.append(len(wm_pairs) // 2)
                    args.extend(wm_pairs)
                    args.append(len(memo_pairs) // 2)
                    args.extend(memo_pairs)
                else:
                    args += [0, 0]
                args.extend(_template_args(rows))
                if running is not None:
                    sent += int(await running)
                running = asyncio.ensure_future(self._publish_script(keys=keys, args=args))
                await asyncio.sleep(0)  # let it send before the next chunk is encoded
            assert running is not None
            sent += int(await running)
        finally:
            if running is not None and not running.done():
                running.cancel()
        return sent


def _template_args(rows: list[tuple[str, ...]]) -> list[str | int | bytes]:
    """The script's entry template for ``rows``, then the rows' own values (one JSON array)."""
    first = rows[0] if rows else ("",) * len(TRACE_FIELDS)
    shared = [all(r[j] == first[j] for r in rows) for j in range(len(TRACE_FIELDS))]
    args: list[str | int | bytes] = [len(TRACE_FIELDS)]
    for j, name in enumerate(TRACE_FIELDS):
        args += [name, "=", first[j]] if shared[j] else [name, "*"]
    own = [j for j, s in enumerate(shared) if not s]
    args.append(orjson.dumps([r[j] for r in rows for j in own]))
    return args
