"""StreamTrimmer: keeps ``telemetry:events`` bounded without ever dropping what a reader needs.

It runs in the server whether or not the fast-path consumer does (``fast_path.enabled: false``
must not mean an unbounded stream). It trims towards ``max_stream_length`` by MINID, and never
past the lowest id still needed by any reader:

- every consumer group on the stream: its oldest pending entry, and the entry after its
  last-delivered id (the ones it has not read yet);
- the session monitor, which reads the stream by position: the entry after its saved position
  (``position_key``: ``Keys.position`` of the install, ``POSITION_KEY`` by default); without a
  saved position nothing is trimmed.

With a per-install key namespace (``redis.key_namespace``, a team's shared Redis) there is one
position per producer. A trimmer reads only its own install's position and never trims on
behalf of other producers: the server of a namespaced producer with ``fast_path.enabled:
false`` runs no trimmer at all (the central ``blueplane consume`` trims), and one with the
fast path on respects its own position and every consumer group.

``XTRIM MINID ~`` removes only whole radix-tree nodes below the id, so it never removes an
entry at or above it.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from blueplane.aio import sleep_or_stop, until_tick
from blueplane.broker import REDIS_DOWN
from blueplane.health import Health
from blueplane.keys import POSITION_KEY

log = logging.getLogger("blueplane.trimmer")

MAX_TRIM_STEP = 10_000  # entries looked over per XTRIM (the boundary is found inside Redis)
MAX_STEPS_PER_ROUND = 50

# The id of the entry ``ARGV[1]`` places from the head, without sending the entries over.
_NTH_ID = """
local r = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
if #r == 0 then return false end
return r[#r][1]
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def successor(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class StreamTrimmer:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        max_length: int,
        health: Health,
        interval_s: float = 10.0,
        position_required: bool = True,
        position_key: str = POSITION_KEY,
    ) -> None:
        self.redis = redis
        # The session monitor's saved position this trimmer must not trim past.
        self.position_key = position_key
        # True (``blueplane run``): without the session monitor's saved position nothing is
        # trimmed. False (``blueplane consume`` on a central host, whose producers may not
        # scan the stream): a missing position holds nothing back; a saved one still does.
        self.position_required = position_required
        self.stream = stream
        self.max_length = max_length
        self.interval_s = interval_s
        self.health = health.component("stream_trimmer")
        self._nth_id = redis.register_script(_NTH_ID)

    async def run(self, stop: asyncio.Event) -> None:
        """Trim every ``interval_s`` until ``stop``; Redis errors are reported and retried."""
        while not stop.is_set():
            try:
                await self.trim()
                self.health.status = "ok"
            except (*REDIS_DOWN, RedisError) as exc:
                self.health.fail("redis_unavailable", f"cannot trim {self.stream}: {exc}")
                log.warning("trimmer: cannot trim %s: %s", self.stream, exc)
            await sleep_or_stop(stop, until_tick(self.interval_s))

    async def safe_trim_id(self) -> str | None:
        """Lowest id some reader still needs: entries strictly below it may go."""
        needed: list[str] = []
        if await self.redis.exists(self.stream):
            for group in await self.redis.xinfo_groups(self.stream):
                needed.append(successor(_text(group["last-delivered-id"])))
                if int(group["pending"]):
                    summary = await self.redis.xpending(self.stream, _text(group["name"]))
                    if summary.get("min"):
                        needed.append(_text(summary["min"]))
        pos = await self.redis.get(self.position_key)
        if pos:
            needed.append(successor(_text(pos)))
        elif self.position_required or not needed:
            needed.append("0-1")
        return min(needed, key=id_key)

    async def trim(self) -> int:
        """Trim towards ``max_length``, never past :meth:`safe_trim_id`; returns entries removed."""
        removed_total = 0
        held_back = False
        for _ in range(MAX_STEPS_PER_ROUND):
            excess = int(await self.redis.xlen(self.stream)) - self.max_length
            if excess <= 0:
                held_back = False
                break
            safe = await self.safe_trim_id()
            if safe is None or safe == "0-1":
                held_back = True
                break
            step = min(excess, MAX_TRIM_STEP)
            # The (step+1)-th entry is the first to keep once ``step`` entries are gone.
            nth = await self._nth_id(keys=[self.stream], args=[step + 1])
            if not nth:
                break
            minid = min(_text(nth), safe, key=id_key)
            # the stream stays longer than wanted: a pending entry or a position holds it
            held_back = minid == safe
            removed = int(await self.redis.xtrim(self.stream, minid=minid, approximate=True))
            if removed == 0:
                # Approximate trimming removes whole nodes only; what is left below minid is
                # in the node holding minid. Exact trimming of that remainder is cheap.
                removed = int(await self.redis.xtrim(self.stream, minid=minid, approximate=False))
            removed_total += removed
            if removed == 0:
                break
        if removed_total:
            self.health.count("trimmed", removed_total)
        if held_back:
            # rounds that stopped short of max_length (shown in status; tests wait on it)
            self.health.count("held_back")
        return removed_total
