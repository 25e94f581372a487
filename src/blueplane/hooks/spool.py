"""SpoolReplayer: hook events the hook command could not send, onto the stream exactly once.

The hook command never waits for Redis: when it cannot send an event it writes the event's
fields to ``BLUEPLANE_HOME/spool/<ns>-<pid>-<rand>.json`` (atomically), and input it could not
use (empty, not JSON, too large, no event name) as a problem record. This component checks the
folder every ``spool_replay_seconds``:

- an event is sent by a Lua script that sets ``blueplane:spooled:<event_id>`` (NX) and XADDs
  only if that key was new, then the file is deleted; a crash between the two leaves a file
  whose key is set, which is then deleted without a second XADD: exactly once;
- a problem record is logged once and counted in ``status`` (``hook_spool`` component:
  ``bad_hook_input``), then deleted: the problem is recorded, not repeated;
- a file that cannot be parsed is moved to ``spool/bad/`` (kept, never lost) and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.aio import sleep_or_stop, until_tick
from blueplane.broker import REDIS_DOWN
from blueplane.health import Health
from blueplane.keys import LEGACY, SPOOLED_TTL_S, Keys

log = logging.getLogger("blueplane.hook_spool")

# KEYS[1] = stream, KEYS[2] = replay marker; ARGV[1] = ttl, then field/value pairs.
_REPLAY_LUA = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
local args = {KEYS[1], '*'}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('XADD', unpack(args))
return 1
"""


class SpoolReplayer:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        spool_dir: Path,
        health: Health,
        interval_s: float = 2.0,
        keys: Keys = LEGACY,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.stream = stream
        self.dir = spool_dir
        self.health = health.component("hook_spool")
        self.interval_s = interval_s
        self._script = redis.register_script(_REPLAY_LUA)

    async def run(self, stop: asyncio.Event) -> None:
        self.health.status = "ok"
        while not stop.is_set():
            try:
                await self.replay_once()
                self.health.status = "ok"
            except REDIS_DOWN as exc:
                self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
            await sleep_or_stop(stop, until_tick(self.interval_s))

    def pending(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(
            p for p in self.dir.iterdir()
            if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
        )  # fmt: skip

    async def replay_once(self) -> int:
        """Replay (or report) every spool file, oldest first; returns events sent."""
        sent = 0
        for path in self.pending():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self._quarantine(path, f"unreadable spool file: {exc}")
                continue
            fields = record.get("fields")
            if isinstance(fields, dict) and fields.get("event_id"):
                args: list[str] = [str(SPOOLED_TTL_S)]
                for k, v in fields.items():
                    args += [str(k), str(v)]
                new = await self._script(
                    keys=[self.stream, self.keys.spooled(str(fields["event_id"]))], args=args
                )
                path.unlink(missing_ok=True)
                if int(new):
                    sent += 1
                    self.health.count("replayed")
                else:
                    self.health.count("already_replayed")
                continue
            problem = str(record.get("problem") or "spool record without fields or problem")
            log.error("hook command: %s (at %s)", problem, record.get("at", "?"))
            self.health.count("bad_hook_input")
            self.health.last_error = f"hook input: {problem}"
            self.health.last_error_at = str(record.get("at") or "")
            path.unlink(missing_ok=True)
        if sent:
            log.info("replayed %d spooled hook event(s) onto %s", sent, self.stream)
        return sent

    def _quarantine(self, path: Path, why: str) -> None:
        bad = self.dir / "bad"
        bad.mkdir(exist_ok=True)
        os.replace(path, bad / path.name)
        log.error("%s: %s; moved to %s", path.name, why, bad)
        self.health.count("bad_spool_files")
        self.health.last_error = f"{path.name}: {why}"
