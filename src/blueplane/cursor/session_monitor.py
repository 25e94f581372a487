"""SessionMonitor: which workspaces are active, from session events on the stream.

Sessions are keyed by ``session_id`` (two windows of one workspace are two sessions; ending
one leaves the other). The active set and the stream position are kept in Redis and advanced
in one transaction, so a restart neither forgets sessions nor replays the stream from ``0-0``.
The proposal's session files (``BLUEPLANE_HOME/cursor-session/<workspace_hash>.json``) are a
fallback: a file present is an active session, a file removed ends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import redis.asyncio as aioredis
from watchfiles import awatch

from blueplane.aio import sleep_or_stop
from blueplane.broker import REDIS_DOWN
from blueplane.events import MalformedEntry, SessionEvent, iso_now
from blueplane.health import Health

log = logging.getLogger("blueplane.session_monitor")

SESSIONS_KEY = "blueplane:sessions"
POSITION_KEY = "blueplane:sessions:last_id"
READ_COUNT = 500


@dataclass(frozen=True)
class ActiveSession:
    session_id: str
    workspace_hash: str
    workspace_path: str
    started_at: str
    source: str  # "redis" or "file"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class SessionMonitor:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        session_dir: Path,
        health: Health,
        file_poll_s: float = 10.0,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.session_dir = session_dir
        self.health = health.component("session_monitor")
        self.file_poll_s = file_poll_s
        self.block_ms = block_ms
        self._redis_sessions: dict[str, ActiveSession] = {}
        self._file_sessions: dict[str, ActiveSession] = {}
        self._last_id = "0-0"
        self.loaded = False
        # Set whenever the active set changes, so the database monitor polls at once.
        self.changed = asyncio.Event()

    # ----------------------------------------------------------------- queries
    def active_sessions(self) -> list[ActiveSession]:
        merged = dict(self._file_sessions)
        merged.update(self._redis_sessions)
        return sorted(merged.values(), key=lambda s: (s.started_at, s.session_id))

    def active_workspaces(self) -> dict[str, list[ActiveSession]]:
        """Active sessions by workspace hash, oldest first (the newest receives traces)."""
        out: dict[str, list[ActiveSession]] = {}
        for s in self.active_sessions():
            out.setdefault(s.workspace_hash, []).append(s)
        return out

    # ----------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        raw = await self.redis.hgetall(SESSIONS_KEY)
        sessions: dict[str, ActiveSession] = {}
        for sid, value in raw.items():
            try:
                data = json.loads(value)
                sessions[sid.decode()] = ActiveSession(**data)
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
                log.error("stored session %r is unreadable (%s); dropped", sid, exc)
                await self.redis.hdel(SESSIONS_KEY, sid)
        self._redis_sessions = sessions
        pos = await self.redis.get(POSITION_KEY)
        self._last_id = pos.decode() if pos else "0-0"
        self.loaded = True
        self.health.status = "ok"
        if sessions:
            log.info("restored %d active session(s) from Redis", len(sessions))
            self.changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self._run_stream(stop), self._run_files(stop))

    async def _run_stream(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if not self.loaded:
                    await self.load()
                await self.read_once(self.block_ms)
                self.health.status = "ok"
            except REDIS_DOWN as exc:
                self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
                log.warning("session monitor: Redis unavailable (%s); retrying", exc)
                await sleep_or_stop(stop, 2.0)

    async def read_once(self, block_ms: int | None = None) -> int:
        """Read and apply the next entries of the stream; returns how many were read."""
        resp = await self.redis.xread(
            {self.stream: self._last_id}, count=READ_COUNT, block=block_ms
        )
        if not resp:
            return 0
        entries = resp[0][1]
        changed = False
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                changed |= self._apply(eid, fields, pipe)
                self._last_id = eid
            pipe.set(POSITION_KEY, self._last_id)
            await pipe.execute()
        if changed:
            self.changed.set()
        return len(entries)

    def _apply(
        self, entry_id: str, fields: dict[bytes, bytes], pipe: aioredis.client.Pipeline
    ) -> bool:
        event_type = fields.get(b"event_type", b"").decode(errors="replace")
        if event_type not in ("session_start", "session_end"):
            return False
        try:
            event = SessionEvent.from_fields(fields)
        except MalformedEntry as exc:
            log.error("stream entry %s: malformed %s ignored: %s", entry_id, event_type, exc)
            self.health.count("malformed_session_events")
            self.health.last_error = f"entry {entry_id}: {exc}"
            self.health.last_error_at = iso_now()
            return False
        p = event.payload
        if event.event_type == "session_start":
            session = ActiveSession(
                p.session_id, p.workspace_hash, p.workspace_path, event.timestamp, "redis"
            )
            self._redis_sessions[p.session_id] = session
            pipe.hset(SESSIONS_KEY, p.session_id, session.to_json())
            log.info(
                "session %s started for workspace %s (%s)",
                p.session_id,
                p.workspace_hash,
                p.workspace_path,
            )
            self.health.count("session_starts")
            return True
        if self._redis_sessions.pop(p.session_id, None) is None:
            log.warning(
                "session_end for unknown session %s (workspace %s) ignored",
                p.session_id,
                p.workspace_hash,
            )
            return False
        pipe.hdel(SESSIONS_KEY, p.session_id)
        log.info("session %s ended for workspace %s", p.session_id, p.workspace_hash)
        self.health.count("session_ends")
        return True

    # ----------------------------------------------------------------- session files
    async def _run_files(self, stop: asyncio.Event) -> None:
        """Rescan on every change in the folder (watchfiles), and every ``file_poll_s`` anyway."""
        while not stop.is_set():
            if self.scan_session_files():
                self.changed.set()
            if not self.session_dir.is_dir():
                await sleep_or_stop(stop, self.file_poll_s)
                continue
            try:
                async for _changes in awatch(
                    self.session_dir, stop_event=stop, debounce=100, recursive=False,
                    rust_timeout=int(self.file_poll_s * 1000), yield_on_timeout=True,
                ):  # fmt: skip
                    if self.scan_session_files():
                        self.changed.set()
                    if not self.session_dir.is_dir():
                        break
            except (OSError, RuntimeError) as exc:  # folder removed under the watcher
                log.warning("watching %s stopped (%s); polling instead", self.session_dir, exc)
                await sleep_or_stop(stop, self.file_poll_s)

    def scan_session_files(self) -> bool:
        """Refresh sessions from the fallback files; True when the set changed."""
        found: dict[str, ActiveSession] = {}
        if self.session_dir.is_dir():
            for path in sorted(self.session_dir.glob("*.json")):
                session = self._read_session_file(path)
                if session is not None:
                    found[session.session_id] = session
        changed = set(found) != set(self._file_sessions)
        self._file_sessions = found
        return changed

    def _read_session_file(self, path: Path) -> ActiveSession | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            key = f"bad_file:{path.name}"
            if key not in self.health.counters:
                log.error("session file %s is unreadable (%s); ignored", path, exc)
            self.health.set_counter(key, 1)
            return None
        if not isinstance(data, dict):
            return None
        sid = data.get("CURSOR_SESSION_ID") or data.get("session_id")
        if not isinstance(sid, str) or not sid:
            return None
        wpath = data.get("workspace_path") if isinstance(data.get("workspace_path"), str) else ""
        started = data.get("started_at") if isinstance(data.get("started_at"), str) else iso_now()
        prior = self._file_sessions.get(sid)
        return ActiveSession(sid, path.stem, wpath, prior.started_at if prior else started, "file")
