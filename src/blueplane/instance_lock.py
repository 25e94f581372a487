"""One ``blueplane run`` per ``BLUEPLANE_HOME`` and Redis: a lock key in that Redis.

Two servers on one home and Redis would read the same databases, race on the same watermarks
and write the same store. The lock is ``blueplane:lock:<sha256(home)[:16]>``, set with ``NX``
and a TTL the holder refreshes; its value says who holds it (pid, host, since). A second server
reads it, says who holds it and exits. A lock left by a killed server is taken over at once
when its holder was on this host and its pid is gone; otherwise it expires with its TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from blueplane.aio import sleep_or_stop, until_tick
from blueplane.broker import REDIS_DOWN
from blueplane.events import iso_now
from blueplane.keys import LEGACY, Keys

log = logging.getLogger("blueplane.instance_lock")

LOCK_TTL_S = 15.0
REFRESH_EVERY_S = 5.0

# Swap the holder only if it is still the one we judged stale (no race with a third server).
_TAKE_OVER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# 1: still ours, refreshed; 2: it had expired (Redis away longer than the TTL) and is ours
# again; 0: someone else holds it now.
_REFRESH_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; a zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:  # no /proc (macOS) or gone meanwhile: trust kill()
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: str
    token: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Holder | None:
        try:
            d = json.loads(raw)
            return cls(int(d["pid"]), str(d["host"]), str(d["since"]), str(d.get("token", "")))
        except (ValueError, KeyError, TypeError):
            return None


class InstanceLocked(RuntimeError):
    """Another server holds the lock of this home and Redis."""

    def __init__(self, key: str, holder: Holder | None, raw: str) -> None:
        self.key, self.holder = key, holder
        who = holder.describe() if holder else f"an unknown holder ({raw!r})"
        super().__init__(
            f"another blueplane server already runs for this BLUEPLANE_HOME and Redis: "
            f"{who} (lock {key}); stop it first"
        )


class InstanceLock:
    """Acquire once at start, then keep refreshing with ``run`` until the server stops."""

    def __init__(
        self,
        redis: aioredis.Redis,
        home: Path,
        ttl_s: float = LOCK_TTL_S,
        refresh_s: float = REFRESH_EVERY_S,
        is_alive: Callable[[int], bool] = pid_alive,
        keys: Keys = LEGACY,
    ) -> None:
        self.redis = redis
        self.key = keys.lock(home)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.refresh_s = refresh_s
        self.is_alive = is_alive
        self.me = Holder(os.getpid(), socket.gethostname(), iso_now(), uuid.uuid4().hex)
        self.held = False
        self._take_over = redis.register_script(_TAKE_OVER_LUA)
        self._refresh = redis.register_script(_REFRESH_LUA)

    async def acquire(self) -> None:
        """Take the lock, or raise ``InstanceLocked`` naming who holds it."""
        mine = self.me.encode()
        for _ in range(5):  # the holder may vanish between our SET and GET: try again
            if await self.redis.set(self.key, mine, nx=True, px=self.ttl_ms):
                self.held = True
                return
            raw = await self.redis.get(self.key)
            if raw is None:
                continue
            holder = Holder.decode(raw)
            stale = await self._stale_reason(holder)
            if stale is None:
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                raise InstanceLocked(self.key, holder, text)
            if await self._take_over(keys=[self.key], args=[raw, mine, self.ttl_ms]):
                log.warning("took over the instance lock %s: %s", self.key, stale)
                self.held = True
                return
        raise InstanceLocked(self.key, None, "changing hands")

    async def _stale_reason(self, holder: Holder | None) -> str | None:
        """Why the current holder can be replaced now, or None when it must be respected."""
        if holder is None:
            if await self.redis.pttl(self.key) == -1:
                return "its value was unreadable and it had no expiry"
            return None
        same_host = holder.host == self.me.host and holder.pid != self.me.pid
        if same_host and not self.is_alive(holder.pid):
            return f"its holder ({holder.describe()}) is no longer running"
        return None

    async def refresh(self) -> bool:
        """Extend the lock; False when another server holds it now."""
        state = int(await self._refresh(keys=[self.key], args=[self.me.encode(), self.ttl_ms]))
        if state == 2:
            log.warning("instance lock %s had expired; taken again", self.key)
        return state != 0

    async def run(self, stop: asyncio.Event, on_lost: Callable[[str], None]) -> None:
        """Refresh every ``refresh_s`` until ``stop``; call ``on_lost`` if the lock is lost."""
        down = False
        while not await sleep_or_stop(stop, until_tick(self.refresh_s)):
            try:
                ours = await self.refresh()
            except (*REDIS_DOWN, RedisError) as exc:
                if not down:
                    log.error("cannot refresh the instance lock %s: %s; retrying", self.key, exc)
                    down = True
                continue
            down = False
            if not ours:
                self.held = False
                raw = await self.redis.get(self.key)
                holder = Holder.decode(raw) if raw is not None else None
                who = holder.describe() if holder else "another server"
                message = f"instance lock {self.key} is now held by {who}"
                log.error("%s; stopping", message)
                on_lost(message)
                return

    async def release(self) -> None:
        """Delete the lock if it is still ours (a clean stop frees it at once)."""
        if not self.held:
            return
        self.held = False
        try:
            await self.redis.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                "return redis.call('DEL', KEYS[1]) end return 0",
                1, self.key, self.me.encode(),
            )  # fmt: skip
        except (*REDIS_DOWN, RedisError) as exc:
            log.warning("could not release the instance lock %s (it expires): %s", self.key, exc)
