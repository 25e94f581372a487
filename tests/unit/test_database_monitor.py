"""CursorDatabaseMonitor in-process: real Redis, real SQLite files, injected sleep and clock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.cursor.schema_detector import SchemaDetector
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.cursor.workspace_mapper import WorkspaceMapper
from blueplane.events import SessionEvent
from blueplane.health import Health
from blueplane.publisher import Publisher
from tests.conftest import async_wait_until
from tests.fixtures.cursor_db import UserDir, hold_lock, make_generation, now_ms

STREAM = "telemetry:events"


class CountingDetector(SchemaDetector):
    """The real detector, counting how often a database is actually opened and read."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.calls = 0
        self.delay_s = delay_s
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def detect(self, conn):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return super().detect(conn)
        finally:
            with self._lock:
                self.active -= 1


class Rig:
    def __init__(self, tmp_path: Path, client: aioredis.Redis, **cfg: object) -> None:
        self.user = UserDir(tmp_path / "User")
        self.user.workspace_storage.mkdir(parents=True)
        self.client = client
        self.health = Health()
        self.sessions = SessionMonitor(
            client, STREAM, tmp_path / "sess", self.health, block_ms=None
        )
        self.mapper = WorkspaceMapper([self.user.path], tmp_path / "cache.json")
        self.cfg = CursorDatabaseMonitorConfig(**cfg)  # type: ignore[arg-type]
        self.sleeps: list[float] = []
        self.detector = CountingDetector()
        self.now = time.time()

        async def fake_sleep(s: float) -> None:
            self.sleeps.append(s)

        self.monitor = CursorDatabaseMonitor(
            self.cfg, self.sessions, self.mapper,
            Publisher(client, STREAM, self.cfg.dedup_window_hours * 3600), self.health,
            self.detector, clock=lambda: self.now, sleep=fake_sleep, jitter=lambda: 0.5,
        )  # fmt: skip

    def project(self, name: str, **kw: object):
        folder = self.user.path.parent / "projects" / name
        folder.mkdir(parents=True)
        return self.user.add_workspace(str(folder), **kw)  # type: ignore[arg-type]

    async def start(self, ws, sid: str = "s") -> None:
        await self.client.xadd(
            STREAM, SessionEvent.build("session_start", ws.folder_path, sid).to_fields()
        )
        await self.sessions.read_once()

    async def traces(self) -> list[dict]:
        import json

        out = []
        for _i, f in await self.client.xrange(STREAM):
            if f.get(b"event_type") == b"database_trace":
                out.append(json.loads(f[b"payload"]))
        return out


async def test_unchanged_database_is_not_opened(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client)
    ws = rig.project("a")
    ws.db.append_generations(2)
    await rig.sessions.load()
    await rig.start(ws)
    await rig.monitor.poll_once()
    assert rig.detector.calls == 1 and len(await rig.traces()) == 2
    for _ in range(5):
        await rig.monitor.poll_once()
    assert rig.detector.calls == 1  # fingerprint unchanged: not read at all
    assert rig.health.workspaces[ws.workspace_hash].status == "idle"
    ws.db.append_generations(1)
    await rig.monitor.poll_once()
    assert rig.detector.calls == 2 and len(await rig.traces()) == 3


async def test_sync_window_on_session_start(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client, sync_window_hours=2)
    ws = rig.project("a")
    rig.now = now_ms() / 1000
    old = make_generation(now_ms() - 3 * 3_600_000, text="old")
    recent = make_generation(now_ms() - 3_600_000, text="recent")
    ws.db.append_generations([old, recent])
    await rig.sessions.load()
    await rig.start(ws)
    await rig.monitor.poll_once()
    assert [t["generation_id"] for t in await rig.traces()] == [recent["generationUUID"]]


async def test_locked_database_retries_with_backoff_while_others_flow(
    tmp_path: Path, client
) -> None:
    rig = Rig(tmp_path, client, query_timeout_seconds=0.1, max_retries=3, retry_backoff_seconds=2)
    locked = rig.project("locked")
    free = rig.project("free")
    locked.db.append_generations(1)
    free.db.append_generations(1)
    locked.db.close()
    await rig.sessions.load()
    await rig.start(locked, "s1")
    await rig.start(free, "s2")
    with hold_lock(locked.db_path, kind="exclusive"):
        await rig.monitor.poll_once()
    # 2 s × 2^attempt × (0.5 + jitter 0.5): exponential backoff, three retries then give up.
    assert rig.sleeps == [2.0, 4.0, 8.0]
    h = rig.health.workspaces
    assert h[locked.workspace_hash].status == "locked"
    assert "locked" in (h[locked.workspace_hash].last_error or "")
    assert h[free.workspace_hash].status == "ok"
    assert len(await rig.traces()) == 1
    await rig.monitor.poll_once()  # lock released: catches up
    assert len(await rig.traces()) == 2
    assert h[locked.workspace_hash].status == "ok"


async def test_max_concurrent_workspaces_is_honoured(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client, max_concurrent_workspaces=2)
    rig.monitor.detector = rig.detector = CountingDetector(delay_s=0.1)
    spaces = [rig.project(f"p{i}") for i in range(5)]
    await rig.sessions.load()
    for i, ws in enumerate(spaces):
        ws.db.append_generations(1)
        await rig.start(ws, f"s{i}")
    await rig.monitor.poll_once()
    assert rig.detector.calls == 5
    assert rig.detector.max_active == 2
    assert len(await rig.traces()) == 5


async def test_unmapped_and_vanished_workspaces_are_reported(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client)
    ws = rig.project("gone")
    ws.db.append_generations(1)
    ws.db.close()
    await rig.sessions.load()
    await rig.start(ws)
    nowhere = tmp_path / "not-a-cursor-folder"
    nowhere.mkdir()
    await rig.client.xadd(
        STREAM, SessionEvent.build("session_start", str(nowhere), "s9").to_fields()
    )
    await rig.sessions.read_once()
    await rig.monitor.poll_once()
    h = rig.health.workspaces
    assert (
        h[SessionEvent.build("session_start", str(nowhere), "x").payload.workspace_hash].status
        == "unmapped"
    )
    assert h[ws.workspace_hash].status == "ok"
    ws.db_path.unlink()
    await rig.monitor.poll_once()
    assert h[ws.workspace_hash].status in ("missing", "unmapped")
    assert h[ws.workspace_hash].errors >= 1


async def test_ending_a_session_forgets_even_an_unmapped_workspace(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client)
    nowhere = tmp_path / "not-cursor"
    nowhere.mkdir()
    await rig.sessions.load()
    start = SessionEvent.build("session_start", str(nowhere), "s1")
    await client.xadd(STREAM, start.to_fields())
    await rig.sessions.read_once()
    await rig.monitor.poll_once()
    h = start.payload.workspace_hash
    assert rig.health.workspaces[h].status == "unmapped"
    await client.xadd(STREAM, SessionEvent.build("session_end", str(nowhere), "s1").to_fields())
    await rig.sessions.read_once()
    await rig.monitor.poll_once()
    assert h not in rig.health.workspaces


async def test_the_production_scheduler_captures_and_leaves_an_idle_database_unread(
    tmp_path: Path, client
) -> None:
    """``run`` → ``_schedule`` (not ``poll_once``): sessions wake it, timed polls keep coming,
    and an unchanged database is checked by fingerprint only, never opened again."""
    rig = Rig(tmp_path, client, poll_interval_seconds=0.05, watch_files=False)
    a, b = rig.project("a"), rig.project("b")
    a.db.append_generations(2)
    b.db.append_generations(1)
    await rig.sessions.load()
    mon, stop = rig.monitor, asyncio.Event()
    task = asyncio.create_task(mon.run(stop))
    try:
        await rig.start(a, "sa")
        await rig.start(b, "sb")

        async def n_traces() -> int:
            return len(await rig.traces())

        await async_wait_until(lambda: _eq(n_traces(), 3), "both workspaces captured")

        def cycles_now() -> int:  # read cycles, or timed polls answered by a fingerprint
            return mon.poller.cycles + mon.checks

        cycles = cycles_now()
        await async_wait_until(lambda: cycles_now() >= cycles + 4, "a few more cycles")
        reads, polls, cycles = mon.reads, mon.polls, cycles_now()
        await async_wait_until(
            lambda: cycles_now() >= cycles + 20 and mon.polls >= polls + 10,
            "twenty more read cycles over the idle databases",
        )
        assert mon.reads == reads  # fingerprints unchanged: nothing was opened
        assert await n_traces() == 3
        assert {rig.health.workspaces[w.workspace_hash].status for w in (a, b)} == {"idle"}

        gen = a.db.append_generations(1)[0]

        async def captured() -> bool:
            return any(t["generation_id"] == gen["generationUUID"] for t in await rig.traces())

        await async_wait_until(captured, "the new generation captured by a timed poll")
        assert mon.reads > reads and await n_traces() == 4
    finally:
        stop.set()
        await task


async def _eq(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def test_the_safety_poll_checks_every_idle_workspace_in_one_round(
    tmp_path: Path, client
) -> None:
    """Idle, the timed polls of all workspaces fall on the same ticks: one scheduling round
    (one wake-up, one status write) per interval checks them all, none opened; not one round
    per workspace at the moment its last read happened to end."""
    rig = Rig(tmp_path, client, poll_interval_seconds=0.2, watch_files=False)
    spaces = [rig.project(f"p{i}") for i in range(6)]
    for ws in spaces:
        ws.db.append_generations(1)
    await rig.sessions.load()
    mon, stop = rig.monitor, asyncio.Event()
    task = asyncio.create_task(mon.run(stop))
    try:
        for i, ws in enumerate(spaces):
            await rig.start(ws, f"s{i}")
            await asyncio.sleep(0.03)  # reads that end at different moments

        async def n_traces() -> int:
            return len(await rig.traces())

        await async_wait_until(lambda: _eq(n_traces(), 6), "every workspace captured")
        await async_wait_until(lambda: mon.checks >= 2 * len(spaces), "idle checks begin")
        reads, polls, checks = mon.reads, mon.polls, mon.checks
        await async_wait_until(
            lambda: mon.checks >= checks + 10 * len(spaces), "ten safety polls of every workspace"
        )
        assert mon.reads == reads  # unchanged fingerprints: nothing opened
        # Per interval: the tick's round, plus the global databases' read finishing (one more).
        # Unaligned, each of the 6 workspaces had a round of its own (≥ 70 here).
        assert mon.polls - polls <= 3 * 11, (mon.polls - polls, mon.checks - checks)
    finally:
        stop.set()
        await task


async def test_a_wal_commit_read_before_its_sync_ended_is_read_once_visible(
    tmp_path: Path, client
) -> None:
    """A WAL commit is visible only once the writer updates the wal-index header in ``-shm``,
    after syncing the frames whose writes woke the read; ``-shm`` raises no file event. Here
    the header is held back (the old one is put back over it) as a slow sync holds it: the
    watch's read sees the old data, and once the header is the new one the commit must be read
    at once, not at the 30 s safety poll (the flaky CI timeout of the pipeline test)."""
    rig = Rig(tmp_path, client)  # file events on (inotify), poll_interval_seconds 30
    ws = rig.project("w", journal_mode="wal")
    ws.db.append_generations(1)
    await rig.sessions.load()
    mon, stop = rig.monitor, asyncio.Event()
    task = asyncio.create_task(mon.run(stop))
    shm = Path(str(ws.db.path) + "-shm")
    try:
        await rig.start(ws)

        async def n_traces() -> int:
            return len(await rig.traces())

        await async_wait_until(lambda: _eq(n_traces(), 1), "the first generation")
        await async_wait_until(lambda: mon.watcher.mode(ws.db.path.parent) == "events", "watch")
        old = shm.read_bytes()[:96]  # both copies of the header
        reads = mon.reads
        ws.db.append_generations(1)
        new = shm.read_bytes()[:96]
        assert new != old
        with shm.open("r+b", buffering=0) as fh:  # the sync is under way: not visible yet
            fh.write(old)
        await async_wait_until(lambda: mon.reads > reads, "the read the -wal's events woke")
        checks = mon.checks
        # The read and the re-checks after it (every 50 ms) see the old header: nothing new.
        await async_wait_until(lambda: mon.checks >= checks + 3, "three re-checks")
        assert await n_traces() == 1
        with shm.open("r+b", buffering=0) as fh:  # the sync ended: the commit is visible
            fh.write(new)
        await async_wait_until(lambda: _eq(n_traces(), 2), "the commit, once visible", 5.0)
        assert mon.poller.late_commits == 1
    finally:
        stop.set()
        await task
