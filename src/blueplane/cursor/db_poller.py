"""DatabasePoller: one read cycle of one Cursor database, shared by every monitor that reads one.

A cycle: compare the fingerprint (size and mtime of the file and its ``-wal``) with the last one
read; if unchanged, nothing is opened. Otherwise one short read-only transaction detects the
layouts and fetches raw rows, JSON is parsed after it ends, and each layout's new items are
published atomically with its watermark. Locks and timeouts are retried with exponential backoff
and jitter; every other failure is recorded in health and left for the next cycle.

The workspace monitor and the global-database monitor both use it and know nothing of each
other; what differs between them (where items go) is the ``route`` they pass in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from blueplane.aio import Backoff
from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.layouts.base import (
    Layout,
    LayoutRead,
    ReadContext,
    RowRevisions,
    TraceItem,
    Watermark,
)
from blueplane.cursor.layouts.disk_bubbles import GlobalBubbles
from blueplane.cursor.schema_detector import Detection, SchemaDetector
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
from blueplane.health import WorkspaceHealth
from blueplane.publisher import Destination, Publisher

log = logging.getLogger("blueplane.database_monitor")

RETRYABLE = (DatabaseLocked, QueryTimeout, ChangedDuringRead)
# Layouts whose fetch leaves values outside the sync window unread (see ``WindowedFetch``).
WINDOWED = frozenset({GlobalBubbles.name})
# Field of the watermark hash naming the file (inode) its watermarks belong to.
FILE_FIELD = "_file"

Router = Callable[[TraceItem], Destination | None]


@dataclass
class DatabaseState:
    """What is remembered of one database between cycles (in memory; watermarks in Redis)."""

    path: Path
    fingerprint: Fingerprint | None = None
    watermarks: dict[str, Watermark] | None = None
    problems_logged: set[str] = field(default_factory=set)
    # Inode of the file the watermarks were read from (persisted beside them as ``_file``).
    inode: int | None = None
    missing: bool = False  # the file vanished in the last cycle

    def has_more(self) -> bool:
        """A layout stopped at its batch limit: there is more to read now (catch-up)."""
        return any(wm.get("more") for wm in (self.watermarks or {}).values())


@dataclass
class Fetched:
    detection: Detection
    raw: dict[str, Any]


class DatabasePoller:
    def __init__(
        self,
        config: CursorDatabaseMonitorConfig,
        publisher: Publisher,
        detector: SchemaDetector | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = config
        self.publisher = publisher
        self.detector = detector or SchemaDetector()
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self._logged: dict[str, str] = {}  # last error line logged per health entry
        # Counters a test or ``status`` can wait on: cycles run, databases actually opened.
        self.cycles = 0
        self.reads = 0
        # Reads of a WAL commit found only by its wal-index header, after a read that ran
        # before the commit was visible (without the header check: found at the safety poll).
        self.late_commits = 0

    def context(self, database_kind: str = "workspace") -> ReadContext:
        now_ms = int(self.clock() * 1000)
        return ReadContext(
            now_ms=now_ms,
            sync_cutoff_ms=now_ms - int(self.cfg.sync_window_hours * 3_600_000),
            capture_content=self.cfg.capture_content,
            database_kind=database_kind,
        )

    async def load_watermarks(self, state: DatabaseState) -> dict[str, Watermark]:
        if state.watermarks is None:
            state.watermarks = await self.publisher.load_watermarks(str(state.path))
            known = state.watermarks.pop(FILE_FIELD, {})
            state.inode = known.get("inode") if isinstance(known.get("inode"), int) else None
        return state.watermarks

    async def poll(
        self,
        state: DatabaseState,
        wh: WorkspaceHealth,
        route: Router,
        database_kind: str = "workspace",
    ) -> int | None:
        """Read one database if it changed and publish; None when it could not be read."""
        self.cycles += 1
        state.missing = False
        db = ReadOnlyDatabase(state.path, self.cfg.query_timeout_seconds)
        try:
            fp = db.fingerprint()
        except DatabaseMissing as exc:
            self.report(wh, exc.status, str(exc))
            state.missing = True
            # Whatever appears here next is a new file: its rowids mean nothing to our
            # watermarks. It is read from the start; the dedup keys skip what was sent.
            await self.publisher.reset_watermarks(str(state.path))
            state.watermarks, state.inode, state.fingerprint = None, None, None
            return None
        if fp == state.fingerprint:
            # Nothing changed on disk: not opened. A standing error stays reported as it is.
            wh.last_check = iso_now()
            if wh.status == "ok":
                wh.status = "idle"
            return 0
        if state.fingerprint is not None and fp == replace(
            state.fingerprint, wal_index=fp.wal_index
        ):
            # Only the wal-index header moved: the last read ran while a commit's frames were
            # written but not yet synced and visible (see ``Fingerprint``); it is read now.
            self.late_commits += 1
        watermarks = await self.load_watermarks(state)
        if state.inode is not None and state.inode != fp.inode:
            # Replaced by another file (restored, copied over): a key's rowid may equal the old
            # watermark by chance while its value differs, so read it from the start.
            log.warning(
                "workspace %s: %s was replaced by a new file; reading it again from the start",
                wh.workspace_hash, state.path,
            )  # fmt: skip
            await self.publisher.reset_watermarks(str(state.path))
            watermarks.clear()
            state.inode = None
        try:
            fetched = await self._read_with_retries(db, watermarks, wh.workspace_hash)
        except CursorDbError as exc:
            self.report(wh, exc.status, str(exc))
            if not isinstance(exc, RETRYABLE):
                state.fingerprint = fp  # nothing will change until the file does
            state.missing = isinstance(exc, DatabaseMissing)
            return None
        detection = fetched.detection
        wh.layout = detection.describe()
        if not detection.supported:
            self.report(wh, "unsupported_schema", detection.describe())
            state.fingerprint = fp
            return None
        ctx = self.context(database_kind)
        # The file's identity rides with the first watermark written, in the same transaction.
        marker = {FILE_FIELD: json.dumps({"inode": fp.inode})} if state.inode != fp.inode else None
        total = 0
        problems: list[str] = []
        for layout in detection.layouts:
            wm = watermarks.get(layout.name, {})
            result, revisions = await self.extract(
                layout, fetched.raw[layout.name], wm, ctx, str(state.path)
            )
            problems.extend(result.problems)
            routed = [(d, item) for item in result.items if (d := route(item)) is not None]
            if routed or result.watermark != wm or marker or revisions:
                total += await self.publisher.publish(
                    routed, str(state.path), layout.name, result.watermark,
                    extra=marker, revisions=revisions,
                )  # fmt: skip
                watermarks[layout.name] = result.watermark
                marker = None
        if marker:
            await self.publisher.set_watermark_fields(str(state.path), marker)
        state.inode = fp.inode
        state.fingerprint = fp
        self._record(state, wh, problems, total)
        return total

    async def extract(
        self, layout: Layout, raw: Any, wm: Watermark, ctx: ReadContext, db_path: str
    ) -> tuple[LayoutRead, dict[str, list[Any]]]:
        """Parse what was fetched (in a thread); for per-row layouts, with their revision memory.

        A per-row layout's memory of what it sent is loaded from Redis for the rows just read
        and handed to it as ``sent``; what it stamped anew comes back to be written with the
        publication. Its watermark then holds no memory at all (an older one that does is
        read as a fallback, once).
        """
        if not isinstance(layout, RowRevisions):
            result = await asyncio.to_thread(layout.extract, raw, wm, ctx)
            return result, {}
        keys = layout.revision_keys(raw)
        known = await self.publisher.load_revisions(db_path, layout.name, keys) if keys else {}
        legacy = wm.get("sent")
        if isinstance(legacy, dict):
            known = {k: legacy[k] for k in keys if k in legacy} | known
        result = await asyncio.to_thread(layout.extract, raw, {**wm, "sent": known}, ctx)
        sent = result.watermark.pop("sent", None)
        stamped = sent if isinstance(sent, dict) else {}
        return result, {k: v for k, v in stamped.items() if known.get(k) != v}

    def _record(
        self, state: DatabaseState, wh: WorkspaceHealth, problems: list[str], total: int
    ) -> None:
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
            wh.items_published += total
            log.info("workspace %s: published %d new trace(s)", wh.workspace_hash, total)

    async def _read_with_retries(
        self, db: ReadOnlyDatabase, watermarks: dict[str, Watermark], workspace_hash: str
    ) -> Fetched:
        # backoff × 2^attempt × (0.5 + jitter), uncapped: max_retries bounds it.
        backoff = Backoff(self.cfg.retry_backoff_seconds, jitter=lambda: 0.5 + self.jitter())
        while True:
            try:
                self.reads += 1
                return await db.read(lambda conn: self._fetch(conn, watermarks))
            except RETRYABLE as exc:
                if backoff.attempts >= self.cfg.max_retries:
                    raise
                delay = backoff.next()
                log.debug(
                    "workspace %s: %s; retry %d/%d in %.2f s",
                    workspace_hash, exc, backoff.attempts, self.cfg.max_retries, delay,
                )  # fmt: skip
                await self.sleep(delay)

    def _fetch(self, conn: Any, watermarks: dict[str, Watermark]) -> Fetched:
        detection = self.detector.detect(conn)
        raw: dict[str, Any] = {}
        cutoff_ms = self.context().sync_cutoff_ms
        layout: Layout
        for layout in detection.layouts:
            wm = watermarks.get(layout.name, {})
            if layout.name in WINDOWED:
                raw[layout.name] = layout.fetch(conn, wm, cutoff_ms)  # type: ignore[call-arg]
            else:
                raw[layout.name] = layout.fetch(conn, wm)
        return Fetched(detection, raw)

    def report(self, wh: WorkspaceHealth, status: str, msg: str) -> None:
        """Record a failure; log it once per distinct cause, not once per cycle."""
        wh.fail(status, msg)
        line = f"{status}: {msg}"
        if self._logged.get(wh.workspace_hash) != line:
            log.error("workspace %s (%s): %s", wh.workspace_hash, wh.workspace_path or "?", line)
            self._logged[wh.workspace_hash] = line

    def forget(self, key: str) -> None:
        self._logged.pop(key, None)
