"""CursorDatabaseMonitor: polls the databases of active workspaces and publishes what is new.

Per poll and database: compare the fingerprint (size and mtime of the file and its ``-wal``)
with the last one read; if unchanged, nothing is opened. Otherwise one short read-only
transaction detects the layouts and fetches raw rows, JSON is parsed after it ends, and each
layout's new items are published atomically with its watermark. Locks and timeouts are retried
with exponential backoff and jitter; every other failure is recorded in health and retried
at the next poll, without holding up other workspaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from blueplane.aio import sleep_or_stop, wait_any
from blueplane.broker import REDIS_DOWN
from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.global_db import GLOBAL_HEALTH_PREFIX, GlobalDatabases
from blueplane.cursor.layouts.base import Layout, LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.schema_detector import Detection, SchemaDetector
from blueplane.cursor.session_monitor import ActiveSession, SessionMonitor
from blueplane.cursor.sqlite_ro import (
    ChangedDuringRead,
    CursorDbError,
    DatabaseLocked,
    DatabaseMissing,
    Fingerprint,
    QueryTimeout,
    ReadOnlyDatabase,
)
from blueplane.events import iso_now
from blueplane.health import Health, WorkspaceHealth
from blueplane.publisher import Destination, Publisher, watermark_key

log = logging.getLogger("blueplane.database_monitor")

RETRYABLE = (DatabaseLocked, QueryTimeout, ChangedDuringRead)
# While Redis is away the monitor retries after 0.5 s, doubling up to 10 s (Cursor is not read
# meanwhile: nothing could be published, and the watermarks say where to resume).
REDIS_RETRY_MIN_S = 0.5
REDIS_RETRY_MAX_S = 10.0
# Field of the watermark hash naming the file (inode) its watermarks belong to.
FILE_FIELD = "_file"


class MapperLike(Protocol):
    async def find_database(self, workspace_hash: str, workspace_path: str | None) -> Any: ...
    def invalidate(self, workspace_hash: str) -> None: ...


@dataclass
class DatabaseState:
    """What the monitor remembers of one database between polls (in memory only)."""

    path: Path
    fingerprint: Fingerprint | None = None
    watermarks: dict[str, Watermark] | None = None
    problems_logged: set[str] = field(default_factory=set)
    # Inode of the file the watermarks were read from (persisted beside them as ``_file``).
    inode: int | None = None


@dataclass
class Fetched:
    detection: Detection
    raw: dict[str, Any]


Router = Callable[[TraceItem], Destination | None]


class CursorDatabaseMonitor:
    def __init__(
        self,
        config: CursorDatabaseMonitorConfig,
        sessions: SessionMonitor,
        mapper: MapperLike,
        publisher: Publisher,
        health: Health,
        detector: SchemaDetector | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = config
        self.sessions = sessions
        self.mapper = mapper
        self.publisher = publisher
        self.health = health
        self.detector = detector or SchemaDetector()
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self._states: dict[str, DatabaseState] = {}
        self._logged: dict[str, str] = {}  # last error line logged per workspace
        self._component = health.component("database_monitor")
        self.polls = 0
        self.global_dbs = GlobalDatabases(self)  # issue 3: globalStorage/state.vscdb
        # run(): one poll task per workspace, so one retrying a lock never delays the others.
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._global_task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(config.max_concurrent_workspaces)

    # ----------------------------------------------------------------- loop
    async def run(self, stop: asyncio.Event) -> None:
        self._component.status = "ok"
        try:
            await self._loop(stop)
        finally:
            await self._finish_inflight()

    async def _loop(self, stop: asyncio.Event) -> None:
        down_since: float | None = None
        redis_delay = REDIS_RETRY_MIN_S
        while not stop.is_set():
            self.sessions.changed.clear()
            try:
                healthy = await self._poll_round()
            except REDIS_DOWN as exc:
                # Back off (doubling, capped) and log once per outage, not once per poll.
                self._component.fail("redis_unavailable", f"Redis unavailable: {exc}")
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("database monitor: Redis unavailable (%s); will catch up", exc)
                else:
                    redis_delay = min(redis_delay * 2, REDIS_RETRY_MAX_S)
                await sleep_or_stop(stop, redis_delay)
                continue
            if down_since is None or healthy:
                self._component.status = "ok"
            if down_since is not None and healthy:
                log.info(
                    "database monitor: Redis answers again after %.1f s; caught up",
                    time.monotonic() - down_since,
                )
                down_since, redis_delay = None, REDIS_RETRY_MIN_S
            await wait_any([stop, self.sessions.changed], self.cfg.poll_interval_seconds)

    async def _poll_round(self) -> bool:
        """Start a poll of each active workspace whose previous poll has finished.

        Unlike ``poll_once`` this does not wait for the workspace polls: a locked database
        retrying with backoff (seconds) keeps its own task while the others are polled at
        their normal interval. Results are collected on the next round; True when one of them
        succeeded or no workspace is active (so an outage is known to be over).
        """
        succeeded = 0
        active = self.sessions.active_workspaces()
        self._drop_inactive(active)
        for h, task in list(self._inflight.items()):
            if not task.done():
                continue
            del self._inflight[h]
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, REDIS_DOWN):
                raise exc
            if exc is not None:
                log.error("unexpected failure while polling: %r", exc, exc_info=exc)
                self._component.fail("error", repr(exc))
            elif not task.cancelled():
                succeeded += 1
        for h, sessions in active.items():
            if h not in self._inflight:
                self._inflight[h] = asyncio.create_task(self._guarded_poll(h, sessions))
        # The global databases get their own task too: a locked one must not delay the rest.
        if self._global_task is None or self._global_task.done():
            self._collect_global()
            self._global_task = asyncio.create_task(self.global_dbs.poll())
        self.polls += 1
        return succeeded > 0 or not active

    def _collect_global(self) -> None:
        task, self._global_task = self._global_task, None
        exc = None if task is None or task.cancelled() else task.exception()
        if isinstance(exc, REDIS_DOWN):
            raise exc
        if exc is not None:
            log.error("unexpected failure polling the global databases: %r", exc, exc_info=exc)
            self._component.fail("error", repr(exc))

    async def _guarded_poll(self, workspace_hash: str, sessions: list[ActiveSession]) -> None:
        async with self._sem:
            await self.poll_workspace(workspace_hash, sessions)

    async def _finish_inflight(self, grace_s: float = 2.0) -> None:
        """On stop: let polls that are publishing finish; cancel those waiting on a lock."""
        tasks = list(self._inflight.values())
        if self._global_task is not None:
            tasks.append(self._global_task)
            self._global_task = None
        self._inflight.clear()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop_inactive(self, active: dict[str, list[ActiveSession]]) -> None:
        """Forget every workspace whose sessions all ended (mapped or not, polling or not)."""
        known = set(self._states) | set(self._inflight) | set(self.health.workspaces)
        for gone in known - set(active):
            if gone.startswith(GLOBAL_HEALTH_PREFIX):
                continue  # the global databases' entries: GlobalDatabases manages them
            log.info("workspace %s has no active session: monitoring stopped", gone)
            self._states.pop(gone, None)
            self._logged.pop(gone, None)
            self.health.workspaces.pop(gone, None)
            task = self._inflight.pop(gone, None)
            if task is not None:
                task.cancel()

    async def poll_once(self) -> None:
        """One pass over every active workspace, at most ``max_concurrent_workspaces`` at once."""
        active = self.sessions.active_workspaces()
        self._drop_inactive(active)
        sem = asyncio.Semaphore(self.cfg.max_concurrent_workspaces)

        async def guarded(h: str, s: list[ActiveSession]) -> None:
            async with sem:
                await self.poll_workspace(h, s)

        results = await asyncio.gather(
            *(guarded(h, s) for h, s in active.items()), return_exceptions=True
        )
        self.polls += 1
        for result in results:
            if isinstance(result, REDIS_DOWN):
                raise result
            if isinstance(result, BaseException):
                # A bug in one workspace's handling must not stop the others.
                log.error("unexpected failure while polling: %r", result, exc_info=result)
                self._component.fail("error", repr(result))
        await self.global_dbs.poll()

    # ----------------------------------------------------------------- one workspace
    async def poll_workspace(self, workspace_hash: str, sessions: list[ActiveSession]) -> None:
        newest = sessions[-1]
        wh = self.health.workspace(workspace_hash)
        wh.workspace_path = newest.workspace_path or wh.workspace_path
        wh.session_ids = [s.session_id for s in sessions]
        started = time.perf_counter()
        state = self._states.get(workspace_hash)
        if state is None or not state.path.exists():
            mapping = await self.mapper.find_database(workspace_hash, newest.workspace_path or None)
            if mapping is None:
                where = newest.workspace_path or "(no path)"
                self._report(wh, "unmapped", f"no Cursor workspace database found for {where}")
                self._states.pop(workspace_hash, None)
                return
            state = DatabaseState(Path(mapping.database))
            self._states[workspace_hash] = state
            wh.database = str(mapping.database)
            wh.storage_id = mapping.storage_id
            wh.mapping_strategy = mapping.strategy
            log.info(
                "workspace %s → %s (%s); syncing the last %g h",
                workspace_hash, mapping.database, mapping.strategy, self.cfg.sync_window_hours,
            )  # fmt: skip
        dest = Destination(
            workspace_hash=workspace_hash,
            session_id=newest.session_id,
            workspace_path=newest.workspace_path or None,
            database_path=str(state.path),
            storage_id=wh.storage_id,
        )
        published = await self.poll_database(state, wh, lambda _item: dest)
        if published is not None:
            wh.items_published += published
        wh.last_poll_ms = round((time.perf_counter() - started) * 1000, 3)

    async def poll_database(
        self, state: DatabaseState, wh: WorkspaceHealth, route: Router
    ) -> int | None:
        """Read one database if it changed and publish; None when it could not be read."""
        db = ReadOnlyDatabase(state.path, self.cfg.query_timeout_seconds)
        try:
            fp = db.fingerprint()
        except DatabaseMissing as exc:
            self._report(wh, exc.status, str(exc))
            self._forget(wh.workspace_hash)
            # Whatever appears here next is a new file: its rowids mean nothing to our
            # watermarks. It is read from the start; the dedup keys skip what was sent.
            await self.publisher.redis.delete(watermark_key(str(state.path)))
            return None
        if fp == state.fingerprint:
            # Nothing changed on disk: not opened. A standing error stays reported as it is.
            wh.last_check = iso_now()
            if wh.status == "ok":
                wh.status = "idle"
            return 0
        if state.watermarks is None:
            state.watermarks = await self.publisher.load_watermarks(str(state.path))
            known = state.watermarks.pop(FILE_FIELD, {})
            state.inode = known.get("inode") if isinstance(known.get("inode"), int) else None
        if state.inode is not None and state.inode != fp.inode:
            # Replaced by another file (restored, copied over): a key's rowid may equal the old
            # watermark by chance while its value differs, so read it from the start.
            log.warning(
                "workspace %s: %s was replaced by a new file; reading it again from the start",
                wh.workspace_hash, state.path,
            )  # fmt: skip
            await self.publisher.redis.delete(watermark_key(str(state.path)))
            state.watermarks, state.inode = {}, None
        watermarks = state.watermarks
        try:
            fetched = await self._read_with_retries(db, watermarks, wh.workspace_hash)
        except CursorDbError as exc:
            self._report(wh, exc.status, str(exc))
            if not isinstance(exc, RETRYABLE):
                state.fingerprint = fp  # nothing will change until the file does
            if isinstance(exc, DatabaseMissing):
                self._forget(wh.workspace_hash)
            return None
        detection = fetched.detection
        wh.layout = detection.describe()
        if not detection.supported:
            self._report(wh, "unsupported_schema", detection.describe())
            state.fingerprint = fp
            return None
        ctx = self._context()
        total = 0
        problems: list[str] = []
        for layout in detection.layouts:
            wm = watermarks.get(layout.name, {})
            result: LayoutRead = await asyncio.to_thread(
                layout.extract, fetched.raw[layout.name], wm, ctx
            )
            problems.extend(result.problems)
            routed = [(d, item) for item in result.items if (d := route(item)) is not None]
            if routed or result.watermark != wm:
                total += await self.publisher.publish(
                    routed, str(state.path), layout.name, result.watermark
                )
                watermarks[layout.name] = result.watermark
        if state.inode != fp.inode:
            ident = json.dumps({"inode": fp.inode})
            await self.publisher.redis.hset(watermark_key(str(state.path)), FILE_FIELD, ident)
            state.inode = fp.inode
        state.fingerprint = fp
        if problems:
            new = [p for p in problems if p not in state.problems_logged]
            for p in new:
                log.error("workspace %s (%s): %s", wh.workspace_hash, state.path, p)
            state.problems_logged = set(problems)
            wh.note_problems(new)
            wh.ok("data_error")
        else:
            state.problems_logged.clear()
            wh.ok("ok")
        if self._logged.pop(wh.workspace_hash, None):
            log.info("workspace %s: %s is readable again", wh.workspace_hash, state.path)
        if total:
            wh.last_change = wh.last_check
            log.info("workspace %s: published %d new trace(s)", wh.workspace_hash, total)
        return total

    # ----------------------------------------------------------------- helpers
    def _context(self) -> ReadContext:
        now_ms = int(self.clock() * 1000)
        return ReadContext(
            now_ms=now_ms,
            sync_cutoff_ms=now_ms - int(self.cfg.sync_window_hours * 3_600_000),
            capture_content=self.cfg.capture_content,
        )

    async def _read_with_retries(
        self, db: ReadOnlyDatabase, watermarks: dict[str, Watermark], workspace_hash: str
    ) -> Fetched:
        attempt = 0
        while True:
            try:
                return await db.read(lambda conn: self._fetch(conn, watermarks))
            except RETRYABLE as exc:
                if attempt >= self.cfg.max_retries:
                    raise
                delay = self.cfg.retry_backoff_seconds * (2**attempt) * (0.5 + self.jitter())
                log.debug(
                    "workspace %s: %s; retry %d/%d in %.2f s",
                    workspace_hash, exc, attempt + 1, self.cfg.max_retries, delay,
                )  # fmt: skip
                attempt += 1
                await self.sleep(delay)

    def _fetch(self, conn: Any, watermarks: dict[str, Watermark]) -> Fetched:
        detection = self.detector.detect(conn)
        raw: dict[str, Any] = {}
        layout: Layout
        for layout in detection.layouts:
            raw[layout.name] = layout.fetch(conn, watermarks.get(layout.name, {}))
        return Fetched(detection, raw)

    def _report(self, wh: WorkspaceHealth, status: str, msg: str) -> None:
        """Record a failure; log it once per distinct cause, not once per poll."""
        wh.fail(status, msg)
        line = f"{status}: {msg}"
        if self._logged.get(wh.workspace_hash) != line:
            log.error("workspace %s (%s): %s", wh.workspace_hash, wh.workspace_path or "?", line)
            self._logged[wh.workspace_hash] = line

    def _forget(self, workspace_hash: str) -> None:
        self._states.pop(workspace_hash, None)
        self.mapper.invalidate(workspace_hash)
