"""SessionMonitor: which workspaces are active, from session events on the stream.

Sessions are keyed by ``session_id`` (two windows of one workspace are two sessions; ending
one leaves the other). The active set and the stream position are kept in Redis and advanced
in one transaction, so a restart neither forgets sessions nor replays the stream from ``0-0``.
The proposal's session files (``BLUEPLANE_HOME/cursor-session/<workspace_hash>.json``) are a
fallback: a file present is an active session, a file removed ends it.

Cost does not grow with trace volume: a server-side Lua script pages through the stream and
returns only ``session_start``/``session_end`` entries, so Python never receives the
``database_trace`` entries that make up nearly all of the stream. While caught up, one
``XREAD BLOCK`` of at most one entry per ``block_ms`` (5 s: an entry ends the wait at once, so
only the idle round-trips depend on it; the stop does not wait for it) is the whole idle cost.

A Cursor window that crashed without ``session_end`` must not keep its workspace polled for
ever: a session whose workspace showed no activity (its start, ``touch()`` by the database
monitor or hooks) for ``idle_expiry_hours`` expires. Last activity per workspace is kept in
Redis (``Keys.activity``), so expiry also holds across restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from watchfiles import awatch

from blueplane.aio import or_stop, sleep_or_stop, wait_any
from blueplane.broker import REDIS_DOWN
from blueplane.events import MalformedEntry, SessionEvent, iso_from_ms, iso_now, parse_iso_ms
from blueplane.health import Health
from blueplane.keys import LEGACY, Keys

log = logging.getLogger("blueplane.session_monitor")

# Entries the Lua script examines per call (about 3 ms of Redis time for ~1 KB entries,
# the fastest page size measured); a full page means more may follow at once.
SCAN_PAGE = 1000
# touch() writes a workspace's activity to Redis at most this often.
ACTIVITY_WRITE_S = 60.0
# How often sessions are checked for expiry.
EXPIRY_CHECK_S = 60.0
# No expiry check this soon after the start or a wall-clock jump (sleep): the database monitor
# first touches the workspaces that changed meanwhile.
EXPIRY_GRACE_S = 300.0
# After a wake-up by a new entry, scans are at least this far apart (a burst of traces is one
# scan, not one per XADD).
MIN_SCAN_INTERVAL_S = 0.1
# While caught up, one blocking XREAD waits this long (an entry ends it at once): the idle
# round-trips of the session monitor. Below the client's 10 s socket timeout, with margin.
IDLE_BLOCK_MS = 5000
# A Redis error other than a lost connection (e.g. the stream key of another type) is retried
# this often.
ERROR_RETRY_S = 10.0

# KEYS[1] = stream; ARGV[1] = last examined id (exclusive); ARGV[2] = page size.
# Returns {last examined id, entries examined, {entries as XRANGE gives them}}: session events
# whole, Cursor hook events cut to what sessions need (event type, metadata, time) so a large
# tool output never leaves Redis.
_SCAN_LUA = """
local page = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local found = {}
local last = ARGV[1]
for _, entry in ipairs(page) do
  last = entry[1]
  local fields = entry[2]
  local etype, htype, meta, ts
  for i = 1, #fields, 2 do
    local k = fields[i]
    if k == 'event_type' then etype = fields[i + 1]
    elseif k == 'hook_type' then htype = fields[i + 1]
    elseif k == 'metadata' then meta = fields[i + 1]
    elseif k == 'timestamp' then ts = fields[i + 1]
    end
  end
  if htype == 'CursorHook' and etype then
    found[#found + 1] = {entry[1], {'event_type', etype, 'hook_type', htype,
                                    'metadata', meta or '{}', 'timestamp', ts or ''}}
  elseif etype == 'session_start' or etype == 'session_end' then
    found[#found + 1] = entry
  end
end
return {last, #page, found}
"""


@dataclass(frozen=True)
class ActiveSession:
    session_id: str
    workspace_hash: str
    workspace_path: str
    started_at: str
    source: str  # "redis" or "file"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass
class _Activity:
    """A workspace's last activity: when, what, and what Redis holds of it."""

    at: float
    what: str
    persisted_at: float = -math.inf

    def encode(self) -> str:
        return f"{self.at:.3f} {self.what}"


@dataclass
class _ScanPage:
    last_id: str
    examined: int
    entries: list[tuple[str, dict[Any, Any]]] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch_of(iso: str) -> float | None:
    try:
        return parse_iso_ms(iso) / 1000
    except (ValueError, TypeError):
        return None


def _minute(iso: str) -> str:
    """``2026-11-27T01:00Z``: a start time to the minute, as ``status`` shows it."""
    at = _epoch_of(iso)
    if at is None:
        return iso
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _short_id(session_id: str) -> str:
    return session_id if len(session_id) <= 12 else session_id[:8] + "…"


class SessionMonitor:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        session_dir: Path,
        health: Health,
        file_poll_s: float = 10.0,
        block_ms: int | None = IDLE_BLOCK_MS,
        idle_expiry_hours: float = 12.0,
        clock: Callable[[], float] = time.time,
        page_size: int = SCAN_PAGE,
        read_stream: bool = True,
        keys: Keys = LEGACY,
    ) -> None:
        self.redis = redis
        # Where this install keeps its sessions, stream position and activity.
        self.keys = keys
        # False: sessions come from session files only; the stream (shared by a team's
        # machines, mostly other machines' traces) is not scanned and Redis sessions not used.
        self.read_stream = read_stream
        self.stream = stream
        self.session_dir = session_dir
        self.health = health.component("session_monitor")
        self.file_poll_s = file_poll_s
        self.block_ms = block_ms
        self.expiry_s = max(0.0, idle_expiry_hours) * 3600
        self.clock = clock
        self.page_size = page_size
        self.error_retry_s = ERROR_RETRY_S
        self.expiry_check_s = EXPIRY_CHECK_S
        self.expiry_grace_s = EXPIRY_GRACE_S
        self._scan_script = redis.register_script(_SCAN_LUA)
        self._redis_sessions: dict[str, ActiveSession] = {}
        self._file_sessions: dict[str, ActiveSession] = {}
        self._file_mtimes: dict[str, float] = {}  # session_id -> its file's mtime
        self._stale_files: dict[Path, float] = {}  # expired file -> the mtime it expired with
        self._activity: dict[str, _Activity] = {}
        self._activity_dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # one of: a page applied, an expiry check
        # Agent transcripts named by hook events: path -> (conversation id, workspace hash).
        self.transcript_paths: dict[str, tuple[str, str]] = {}
        self.transcripts_changed = asyncio.Event()
        self._last_id = "0-0"
        self.loaded = False
        # Set whenever the active set changes, so the database monitor polls at once.
        self.changed = asyncio.Event()

    # ----------------------------------------------------------------- queries
    @staticmethod
    async def stored_sessions(
        redis: aioredis.Redis, keys: Keys = LEGACY
    ) -> dict[str, ActiveSession]:
        """The sessions Redis holds as active, by session id, for readers outside the server
        (the CLI); read-only: an unreadable entry is skipped here and dropped by ``load``."""
        sessions: dict[str, ActiveSession] = {}
        for sid, value in (await redis.hgetall(keys.sessions)).items():
            try:
                sessions[_text(sid)] = ActiveSession(**json.loads(value))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                continue
        return sessions

    @staticmethod
    async def stored_session_count(redis: aioredis.Redis, keys: Keys = LEGACY) -> int:
        """How many sessions Redis holds as active (readable or not)."""
        return int(await redis.hlen(keys.sessions))

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

    def last_activity(self, workspace_hash: str) -> tuple[float, str] | None:
        """When the workspace last showed activity, and what it was (None: never)."""
        found: list[tuple[float, str]] = []
        act = self._activity.get(workspace_hash)
        if act is not None:
            found.append((act.at, act.what))
        for s in self._redis_sessions.values():
            at = _epoch_of(s.started_at) if s.workspace_hash == workspace_hash else None
            if at is not None:
                found.append((at, "session start"))
        for sid, s in self._file_sessions.items():
            at = self._file_mtimes.get(sid) if s.workspace_hash == workspace_hash else None
            if at is not None:
                found.append((at, "session file written"))
        return max(found, key=lambda f: f[0]) if found else None

    def active_reason(self, workspace_hash: str) -> str:
        """Why ``status`` lists the workspace as active: its sessions, activity and expiry."""
        sessions = self.active_workspaces().get(workspace_hash)
        if not sessions:
            return "not active: no session"
        parts = [
            f"session {_short_id(s.session_id)} ({s.source}) started {_minute(s.started_at)}"
            for s in sessions
        ]
        reason = ", ".join(parts)
        now = self.clock()
        last = self.last_activity(workspace_hash)
        if last is not None:
            reason += f"; last activity {_ago(now - last[0])} ({last[1]})"
        if self.expiry_s <= 0:
            return reason + "; never expires (session_idle_expiry_hours: 0)"
        reason += f"; expires after {self.expiry_s / 3600:g} h idle"
        if last is not None:
            left = max(0.0, self.expiry_s - (now - last[0]))
            reason += f" (in {left / 3600:.1f} h)"
        return reason

    # ----------------------------------------------------------------- activity
    def touch(self, workspace_hash: str, what: str = "database change") -> None:
        """Note activity of a workspace (its database changed, a hook event came).

        Cheap: memory only; Redis is written at most once per ``ACTIVITY_WRITE_S`` per
        workspace, by the maintenance task.
        """
        now = self.clock()
        act = self._activity.get(workspace_hash)
        if act is None:
            self._activity[workspace_hash] = act = _Activity(now, what)
        elif now >= act.at:
            act.at, act.what = now, what
        if now - act.persisted_at >= ACTIVITY_WRITE_S:
            self._activity_dirty.set()

    async def flush_activity(self) -> int:
        """Write the activity that is due to Redis; returns how many workspaces were written."""
        self._activity_dirty.clear()
        due = {
            ws: act
            for ws, act in self._activity.items()
            if act.at > act.persisted_at and act.at - act.persisted_at >= ACTIVITY_WRITE_S
        }
        if not due:
            return 0
        snapshot = {ws: (act.at, act.encode()) for ws, act in due.items()}
        await self.redis.hset(
            self.keys.activity, mapping={ws: v for ws, (_, v) in snapshot.items()}
        )
        for ws, (at, _) in snapshot.items():
            self._activity[ws].persisted_at = at
        return len(snapshot)

    # ----------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        if not self.read_stream:
            self.loaded = True
            self.health.status = "ok"
            return
        raw = await self.redis.hgetall(self.keys.sessions)
        sessions: dict[str, ActiveSession] = {}
        for sid, value in raw.items():
            try:
                data = json.loads(value)
                sessions[sid.decode()] = ActiveSession(**data)
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
                log.error("stored session %r is unreadable (%s); dropped", sid, exc)
                await self.redis.hdel(self.keys.sessions, sid)
        self._redis_sessions = sessions
        for ws, value in (await self.redis.hgetall(self.keys.activity)).items():
            try:
                at_text, _, what = _text(value).partition(" ")
                at = float(at_text)
            except (ValueError, UnicodeDecodeError) as exc:
                log.error("stored activity of %r is unreadable (%s); dropped", ws, exc)
                await self.redis.hdel(self.keys.activity, ws)
                continue
            self._activity[_text(ws)] = _Activity(at, what or "activity", persisted_at=at)
        pos = await self.redis.get(self.keys.position)
        self._last_id = pos.decode() if pos else "0-0"
        self.loaded = True
        self.health.status = "ok"
        if sessions:
            log.info("restored %d active session(s) from Redis", len(sessions))
            self.changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        if not self.read_stream:
            await self.load()
            await asyncio.gather(self._run_files(stop), self._run_maintenance(stop))
            return
        await asyncio.gather(
            self._run_stream(stop), self._run_files(stop), self._run_maintenance(stop)
        )

    async def _run_stream(self, stop: asyncio.Event) -> None:
        """Scan while there is something new; otherwise one small blocking XREAD per block."""
        block_ms = self.block_ms or IDLE_BLOCK_MS
        scan, scanned_at = True, -math.inf
        while not stop.is_set():
            try:
                if not self.loaded:
                    await self.load()
                if scan:
                    scanned_at = time.monotonic()
                    await self.scan()
                    self.health.status = "ok"
                # Given up on stop: a long block never delays it.
                scan = bool(await or_stop(self._wait_for_entry(block_ms), stop))
                if scan:  # coalesce a burst of writes into one scan
                    wait = MIN_SCAN_INTERVAL_S - (time.monotonic() - scanned_at)
                    await sleep_or_stop(stop, wait)
            except REDIS_DOWN as exc:
                self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
                log.warning("session monitor: Redis unavailable (%s); retrying", exc)
                scan = True
                await sleep_or_stop(stop, 2.0)
            except ResponseError as exc:  # e.g. the stream key holds another type
                if self.health.status != "redis_error":  # once until it recovers
                    log.error("session monitor: reading %s failed (%s); retrying every %g s",
                              self.stream, exc, self.error_retry_s)  # fmt: skip
                self.health.fail("redis_error", f"reading {self.stream}: {exc}")
                scan = True
                await sleep_or_stop(stop, self.error_retry_s)

    async def _wait_for_entry(self, block_ms: int) -> bool:
        """Block until an entry follows the position (True) or ``block_ms`` passed (False)."""
        resp = await self.redis.xread({self.stream: self._last_id}, count=1, block=block_ms)
        return bool(resp)

    async def read_once(self, block_ms: int | None = None) -> int:
        """Examine every entry after the position; returns how many were examined.

        With ``block_ms``, when there was nothing new, wait that long for an entry first.
        """
        n = await self.scan()
        if n == 0 and block_ms is not None and await self._wait_for_entry(block_ms):
            n = await self.scan()
        return n

    async def scan(self) -> int:
        """Examine the stream up to its end, page by page; only session entries reach Python."""
        total = 0
        while True:
            async with self._lock:
                page = await self._scan_page()
                if page.examined:
                    await self._apply_page(page)
            total += page.examined
            if page.examined < self.page_size:
                return total

    async def _scan_page(self) -> _ScanPage:
        last, examined, found = await self._scan_script(
            keys=[self.stream], args=[self._last_id, self.page_size]
        )
        entries = []
        for entry_id, flat in found:
            entries.append((_text(entry_id), dict(zip(flat[::2], flat[1::2], strict=True))))
        self.health.count("scan_calls")
        self.health.count("entries_examined", int(examined))
        return _ScanPage(_text(last), int(examined), entries)

    async def _apply_page(self, page: _ScanPage) -> None:
        """The page's session changes and the new position, in one transaction.

        Memory follows only once Redis has them: the database monitor never sees a session
        that a failed transaction would make it forget after a restart.
        """
        now = self.clock()
        changed = False
        sessions = dict(self._redis_sessions)
        started: dict[str, _Activity] = {}
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, fields in page.entries:
                self.health.count("entries_parsed")
                if _text(fields.get(b"hook_type", fields.get("hook_type", ""))) == "CursorHook":
                    ws = self._apply_hook(entry_id, fields, sessions, pipe)
                else:
                    ws = self._apply(entry_id, fields, sessions, pipe)
                if ws is not None:
                    changed = True
                    if ws:
                        started[ws] = _Activity(now, "session start", persisted_at=now)
            for ws, act in started.items():  # a start is activity: durable with the session
                pipe.hset(self.keys.activity, ws, act.encode())
            pipe.set(self.keys.position, page.last_id)
            await pipe.execute()
        self._redis_sessions = sessions
        self._activity.update(started)
        self._last_id = page.last_id
        if changed:
            self.changed.set()

    def _apply(
        self,
        entry_id: str,
        fields: dict[Any, Any],
        sessions: dict[str, ActiveSession],
        pipe: aioredis.client.Pipeline,
    ) -> str | None:
        """Apply one session entry; returns None (no change), "" (an end) or the started hash."""
        try:
            event = SessionEvent.from_fields(fields)
        except MalformedEntry as exc:
            kind = _text(fields.get(b"event_type", fields.get("event_type", "session event")))
            log.error("stream entry %s: malformed %s ignored: %s", entry_id, kind, exc)
            self.health.count("malformed_session_events")
            self.health.last_error = f"entry {entry_id}: {exc}"
            self.health.last_error_at = iso_now()
            return None
        p = event.payload
        if event.event_type == "session_start":
            started_at = event.timestamp
            if _epoch_of(started_at) is None:
                log.warning(
                    "session %s: timestamp %r is not ISO 8601; using the time it was read",
                    p.session_id, started_at,
                )  # fmt: skip
                started_at = iso_from_ms(self.clock() * 1000)
            session = ActiveSession(
                p.session_id, p.workspace_hash, p.workspace_path, started_at, "redis"
            )
            sessions[p.session_id] = session
            pipe.hset(self.keys.sessions, p.session_id, session.to_json())
            log.info(
                "session %s started for workspace %s (%s)",
                p.session_id,
                p.workspace_hash,
                p.workspace_path,
            )
            self.health.count("session_starts")
            return p.workspace_hash
        if sessions.pop(p.session_id, None) is None:
            log.warning(
                "session_end for unknown session %s (workspace %s) ignored",
                p.session_id,
                p.workspace_hash,
            )
            return None
        pipe.hdel(self.keys.sessions, p.session_id)
        log.info("session %s ended for workspace %s", p.session_id, p.workspace_hash)
        self.health.count("session_ends")
        return ""

    def _apply_hook(
        self,
        entry_id: str,
        fields: dict[Any, Any],
        sessions: dict[str, ActiveSession],
        pipe: aioredis.client.Pipeline,
    ) -> str | None:
        """A Cursor hook event: ``sessionStart``/``sessionEnd`` start and end the session of
        its conversation in ``workspace_roots[0]``; any other hook event is activity, and
        starts a session when its workspace has none (hooks installed mid-session)."""
        get = lambda k: _text(fields.get(k.encode(), fields.get(k, "")))  # noqa: E731
        name = get("event_type")
        try:
            meta = json.loads(get("metadata") or "{}")
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            log.error("stream entry %s: hook event %s with unreadable metadata ignored",
                      entry_id, name)  # fmt: skip
            self.health.count("malformed_session_events")
            return None
        ws, path = meta.get("workspace_hash"), meta.get("workspace_path") or ""
        conv = meta.get("conversation_id")
        self.health.count("hook_events")
        tpath = meta.get("transcript_path")
        if isinstance(tpath, str) and tpath and tpath not in self.transcript_paths:
            self.transcript_paths[tpath] = (str(conv or ""), str(ws or ""))
            self.transcripts_changed.set()
        if not isinstance(ws, str) or not ws:
            return None  # no workspace_roots (e.g. a CLI agent outside a folder)
        sid = conv if isinstance(conv, str) and conv else f"hook:{ws}"
        started_at = get("timestamp")
        if _epoch_of(started_at) is None:
            started_at = iso_from_ms(self.clock() * 1000)
        if name == "sessionEnd":
            if sessions.pop(sid, None) is None:
                return None
            pipe.hdel(self.keys.sessions, sid)
            log.info("session %s ended for workspace %s (hook)", sid, ws)
            self.health.count("session_ends")
            return ""
        self.touch(ws, "hook event")
        if name != "sessionStart" and (
            any(s.workspace_hash == ws for s in sessions.values())
            or any(s.workspace_hash == ws for s in self._file_sessions.values())
        ):
            return None
        if name == "sessionStart" and sid in sessions:
            return None
        session = ActiveSession(sid, ws, str(path), started_at, "hook")
        sessions[sid] = session
        pipe.hset(self.keys.sessions, sid, session.to_json())
        why = "sessionStart" if name == "sessionStart" else f"hook activity ({name})"
        log.info("session %s started for workspace %s (%s) by %s", sid, ws, path, why)
        self.health.count("session_starts")
        if name != "sessionStart":
            self.health.count("hook_sessions_implied")
        return ws

    # ----------------------------------------------------------------- expiry
    async def _run_maintenance(self, stop: asyncio.Event) -> None:
        """Write due activity as it comes; check expiry every ``expiry_check_s``.

        No check within ``expiry_grace_s`` of the start or of a wall-clock jump (a laptop
        waking from sleep): the database monitor first gets to see, and touch(), the
        workspaces that changed meanwhile, so an open window is not expired on waking.
        """
        grace_until = time.monotonic() + self.expiry_grace_s
        last_wall, last_mono = self.clock(), time.monotonic()
        checked_at = -math.inf
        while not stop.is_set():
            wall, mono = self.clock(), time.monotonic()
            jump = (wall - last_wall) - (mono - last_mono)
            if jump > max(60.0, self.expiry_check_s):
                log.info(
                    "wall clock jumped %.1f h (sleep or suspend); expiry checks resume in %g s",
                    jump / 3600, self.expiry_grace_s,
                )  # fmt: skip
                grace_until = mono + self.expiry_grace_s
                self.health.count("clock_jumps")
            last_wall, last_mono = wall, mono
            try:
                await self.flush_activity()
                if mono >= grace_until and mono - checked_at >= self.expiry_check_s:
                    await self.expire_idle()
                    self.health.count("expiry_checks")
                    checked_at = mono
            except REDIS_DOWN as exc:
                log.warning("session monitor: Redis unavailable for expiry (%s)", exc)
                self._activity_dirty.set()
                await sleep_or_stop(stop, 2.0)
                continue
            wake = max(0.05, min(self.expiry_check_s, grace_until - mono))
            await wait_any([stop, self._activity_dirty], wake)

    def _idle_s(self, workspace_hash: str, now: float, since: float = -math.inf) -> float:
        last = self.last_activity(workspace_hash)
        return now - max(since, last[0] if last else -math.inf)

    async def expire_idle(self) -> list[ActiveSession]:
        """End sessions whose workspace showed no activity for the expiry time."""
        if self.expiry_s <= 0:
            return []
        files_changed = self.scan_session_files()
        expired: list[tuple[ActiveSession, float]] = []
        async with self._lock:
            now = self.clock()
            for s in list(self._redis_sessions.values()):
                idle = self._idle_s(s.workspace_hash, now)
                if idle >= self.expiry_s:
                    expired.append((s, idle))
            if expired:
                workspaces = {s.workspace_hash for s, _ in expired}
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(self.keys.sessions, *[s.session_id for s, _ in expired])
                    pipe.hdel(self.keys.activity, *workspaces)
                    await pipe.execute()
                for s, idle in expired:
                    self._redis_sessions.pop(s.session_id, None)
                    self._log_expired(s, idle)
                for ws in workspaces:
                    self._activity.pop(ws, None)
            await self._forget_old_activity(now)
        if expired or files_changed:
            self.changed.set()
        return [s for s, _ in expired]

    async def _forget_old_activity(self, now: float) -> None:
        """Drop activity of workspaces without a session once it is older than the expiry."""
        active = set(self.active_workspaces())
        old = [
            ws
            for ws, act in self._activity.items()
            if ws not in active and now - act.at >= self.expiry_s
        ]
        if old:
            await self.redis.hdel(self.keys.activity, *old)
            for ws in old:
                self._activity.pop(ws, None)

    def _log_expired(self, s: ActiveSession, idle_s: float) -> None:
        log.info(
            "session %s of workspace %s expired after %.1f h without activity",
            s.session_id, s.workspace_hash, idle_s / 3600,
        )  # fmt: skip
        self.health.count("sessions_expired")

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
        """Refresh sessions from the fallback files; True when the set changed.

        A file whose workspace showed no activity (its own mtime included) for the expiry
        time is ignored while it stays so; writing the file again revives it.
        """
        found: dict[str, ActiveSession] = {}
        mtimes: dict[str, float] = {}
        now = self.clock()
        seen: set[Path] = set()
        if self.session_dir.is_dir():
            for path in sorted(self.session_dir.glob("*.json")):
                try:
                    mtime = path.stat().st_mtime
                except OSError:  # removed meanwhile
                    continue
                session = self._read_session_file(path, mtime)
                if session is None:
                    continue
                seen.add(path)
                if self.expiry_s > 0:
                    idle = self._idle_s(session.workspace_hash, now, since=mtime)
                    if idle >= self.expiry_s:
                        if self._stale_files.get(path) != mtime:
                            self._stale_files[path] = mtime
                            self._log_expired(session, idle)
                        continue
                if self._stale_files.pop(path, None) is not None:
                    log.info("session file %s written again: session %s revived", path,
                             session.session_id)  # fmt: skip
                found[session.session_id] = session
                mtimes[session.session_id] = mtime
        for path in set(self._stale_files) - seen:
            del self._stale_files[path]
        changed = set(found) != set(self._file_sessions)
        self._file_sessions = found
        self._file_mtimes = mtimes
        return changed

    def _read_session_file(self, path: Path, mtime: float) -> ActiveSession | None:
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
        started = data.get("started_at")
        if not isinstance(started, str) or _epoch_of(started) is None:
            started = iso_from_ms(mtime * 1000)
        prior = self._file_sessions.get(sid)
        return ActiveSession(sid, path.stem, wpath, prior.started_at if prior else started, "file")
