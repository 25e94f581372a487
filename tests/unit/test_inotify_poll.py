"""The timer-read inotify watch: it sees Cursor's writes, and no thread of ours waits for them.

Real files written the way Cursor writes them; the watch runs in this event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from watchfiles import Change, awatch

from blueplane.cursor import inotify_poll
from blueplane.cursor.change_watcher import _db_file
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.publisher import Publisher
from tests.conftest import async_wait_until
from tests.fixtures.cursor_db import CursorDb
from tests.unit.test_database_monitor import STREAM, Rig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def _first_batch(watch: Any, folder: Path, write: Any) -> tuple[set[Any], int]:
    """Run ``watch`` on ``folder`` and ``write`` until it reports a batch (the watch is set up
    on the generator's first step, so early writes may pass unseen): the first batch, and the
    process's thread count while the watch ran."""
    stop = asyncio.Event()
    gen = watch(folder, watch_filter=_db_file, debounce=20, step=20, stop_event=stop)
    first = asyncio.ensure_future(gen.__anext__())
    for _ in range(200):
        write()
        done, _pending = await asyncio.wait({first}, timeout=0.05)
        if done:
            break
    batch = await asyncio.wait_for(first, 1)
    threads = _threads()
    stop.set()
    await gen.aclose()
    return batch, threads


async def test_it_reports_writes_to_the_database_files_and_not_to_shm(tmp_path: Path) -> None:
    db_path = tmp_path / "state.vscdb"
    db = CursorDb(db_path, journal_mode="delete", tables=("ItemTable",), persistent=True)

    def write() -> None:
        (tmp_path / "state.vscdb-shm").write_bytes(b"readers touch this")
        db.write_batch({"k": "v"})

    batch, _ = await _first_batch(inotify_poll.poll_watch, tmp_path, write)
    db.close()
    names = {os.path.basename(p) for _c, p in batch}
    assert "state.vscdb" in names
    assert "state.vscdb-shm" not in names
    assert (Change.added, str(tmp_path / "state.vscdb-journal")) in batch  # the journal appeared


async def test_no_thread_is_started_to_wait_for_events(tmp_path: Path) -> None:
    """watchfiles starts a notify thread blocked on the inotify descriptor, which each of
    Cursor's writes wakes; the timer-read watch reads from the event loop and starts none."""
    before = _threads()
    write = (tmp_path / "state.vscdb").write_bytes
    _batch, during = await _first_batch(inotify_poll.poll_watch, tmp_path, lambda: write(b"x"))
    assert during == before
    # The same check fails for watchfiles (it is what makes the check meaningful).
    write(b"")
    _batch, during_wf = await _first_batch(awatch, tmp_path, lambda: write(b"y"))
    assert during_wf > before


async def test_a_folder_that_cannot_be_watched_raises_oserror(tmp_path: Path) -> None:
    gen = inotify_poll.poll_watch(tmp_path / "missing", stop_event=asyncio.Event())
    with pytest.raises(OSError):
        await gen.__anext__()


def test_a_queue_overflow_is_reported() -> None:
    buf = struct.pack("iIII", -1, inotify_poll.IN_Q_OVERFLOW, 0, 0)
    name = b"state.vscdb\0\0\0\0\0"
    buf += struct.pack("iIII", 1, inotify_poll.IN_MODIFY, 0, len(name)) + name
    changes, overflow = inotify_poll.parse(buf, {1: "/w"})
    assert overflow
    assert changes == {(Change.modified, "/w/state.vscdb")}


@pytest.mark.parametrize("quietly", [True, False])
async def test_the_monitor_uses_the_quiet_watch_unless_told_not_to(
    tmp_path: Path, client: Any, quietly: bool
) -> None:
    rig = Rig(tmp_path, client, watch_quietly=quietly)
    mon = CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper, Publisher(rig.client, STREAM, 3600), rig.health
    )
    assert mon.watcher is not None
    assert (mon.watcher._watch is inotify_poll.poll_watch) is quietly


class _CountDrains:
    """Counts the watch's reads of its inotify queue (its ticks that looked for changes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = inotify_poll._drain

        def counted(fd: int, folders: dict[int, str]) -> set[Any]:
            self.calls += 1
            return real(fd, folders)

        monkeypatch.setattr(inotify_poll, "_drain", counted)


async def _started(folder: Path, debounce: int) -> tuple[Any, asyncio.Event, asyncio.Future[Any]]:
    stop = asyncio.Event()
    gen = inotify_poll.poll_watch(
        folder, watch_filter=_db_file, debounce=debounce, step=20, stop_event=stop
    )
    first = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0)  # the watch is set up; its first tick is 20 ms away
    return gen, stop, first


async def test_a_change_is_reported_on_the_tick_that_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on a later, quiet tick: the read then starts right after Cursor's commit and not
    50-100 ms later, just before its next flush (where it met 3 commits in 80)."""
    drains = _CountDrains(monkeypatch)
    gen, stop, first = await _started(tmp_path, debounce=1000)
    (tmp_path / "state.vscdb").write_bytes(b"committed")
    batch = await asyncio.wait_for(first, 5)
    assert (Change.added, str(tmp_path / "state.vscdb")) in batch
    assert drains.calls == 1
    stop.set()
    await gen.aclose()


async def test_nothing_is_reported_while_a_rollback_transaction_is_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its -journal exists: a read now would hold a SHARED lock that Cursor's commit waits on."""
    drains = _CountDrains(monkeypatch)
    gen, stop, first = await _started(tmp_path, debounce=60_000)
    journal = tmp_path / "state.vscdb-journal"
    journal.write_bytes(b"rollback journal")
    (tmp_path / "state.vscdb").write_bytes(b"pages being written")
    await async_wait_until(lambda: drains.calls >= 5, "five looks")  # again and again
    assert not first.done()
    journal.unlink()  # the commit is over
    batch = await asyncio.wait_for(first, 5)
    assert {os.path.basename(p) for _c, p in batch} == {"state.vscdb", "state.vscdb-journal"}
    stop.set()
    await gen.aclose()


async def test_a_journal_that_stays_delays_the_report_by_at_most_the_debounce(
    tmp_path: Path,
) -> None:
    """A hot journal left by a crashed writer must not stop capture."""
    gen, stop, first = await _started(tmp_path, debounce=40)
    (tmp_path / "state.vscdb-journal").write_bytes(b"left behind")
    batch = await asyncio.wait_for(first, 5)
    assert batch
    stop.set()
    await gen.aclose()


async def test_the_default_configuration_watches_quietly_on_linux(
    tmp_path: Path, client: Any
) -> None:
    rig = Rig(tmp_path, client)
    mon = CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper, Publisher(rig.client, STREAM, 3600), rig.health
    )
    assert mon.watcher is not None
    assert mon.watcher._watch is inotify_poll.poll_watch


async def test_without_inotify_the_default_configuration_uses_watchfiles(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inotify_poll, "available", lambda: False)  # macOS, Windows
    rig = Rig(tmp_path, client)
    mon = CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper, Publisher(rig.client, STREAM, 3600), rig.health
    )
    assert mon.watcher is not None
    assert mon.watcher._watch is awatch


async def test_with_nothing_changing_it_stops_ticking_and_the_first_write_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle must cost nothing: after IDLE_AFTER_S without events the watch waits on the
    descriptor (no timer at all); the first write wakes it and is reported as usual."""
    monkeypatch.setattr(inotify_poll, "IDLE_AFTER_S", 0.1)
    drains = _CountDrains(monkeypatch)
    idle = asyncio.Event()
    real = inotify_poll._readable

    async def readable(loop: Any, fd: int, stop: asyncio.Event) -> None:
        idle.set()
        await real(loop, fd, stop)
        idle.clear()

    monkeypatch.setattr(inotify_poll, "_readable", readable)
    gen, stop, first = await _started(tmp_path, debounce=1000)
    await asyncio.wait_for(idle.wait(), 5)
    ticks_before_idle = drains.calls
    assert ticks_before_idle >= 1
    # Idle: the generator is parked on the descriptor, not on a timer.
    assert not first.done()
    (tmp_path / "state.vscdb").write_bytes(b"first write after a quiet spell")
    batch = await asyncio.wait_for(first, 5)
    assert (Change.added, str(tmp_path / "state.vscdb")) in batch
    assert drains.calls == ticks_before_idle + 1  # woken, then one read of the queue
    stop.set()
    await gen.aclose()


async def test_a_wal_is_read_only_once_its_last_write_is_old_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL commit is visible only after its frames (the events) are synced and the index in
    -shm is updated, which raises no event: a read right at the event could see the old data
    while the -wal's size and mtime already say it was read. So it waits WAL_SETTLE_MS."""
    monkeypatch.setattr(inotify_poll, "WAL_SETTLE_MS", 300, raising=False)  # above the 20 ms tick
    gen, stop, first = await _started(tmp_path, debounce=60_000)
    wal = tmp_path / "state.vscdb-wal"
    wal.write_bytes(b"frames")
    batch = await asyncio.wait_for(first, 5)
    age_s = time.time() - wal.stat().st_mtime
    assert (Change.added, str(wal)) in batch
    assert age_s >= 0.29  # the file clock is coarse: a few ms of slack
    stop.set()
    await gen.aclose()


async def _reports_while_writing(
    folder: Path, write: Any, commits: int, interval_s: float
) -> tuple[list[float], list[float]]:
    """Run the watch (50 ms ticks, as configured by default) while ``write`` commits every
    ``interval_s``: the end time of every commit and the time of every report."""
    stop = asyncio.Event()
    gen = inotify_poll.poll_watch(
        folder, watch_filter=_db_file, debounce=50, step=50, stop_event=stop
    )
    reports: list[float] = []
    ends: list[float] = []

    async def collect() -> None:
        async for _batch in gen:
            reports.append(time.monotonic())

    task = asyncio.ensure_future(collect())
    await asyncio.sleep(0)  # the watch is set up
    start = time.monotonic()
    for i in range(commits):
        write(i)
        ends.append(time.monotonic())
        await asyncio.sleep(max(0.0, start + (i + 1) * interval_s - time.monotonic()))
    # The last commit is reported within the longest hold (plus a tick): wait on that report.
    await async_wait_until(lambda: bool(reports) and reports[-1] >= ends[-1], "the last report")
    stop.set()
    await asyncio.wait_for(task, 5)
    return ends, reports


async def test_a_rollback_database_written_at_10_hz_is_reported_once_per_two_commits(
    tmp_path: Path,
) -> None:
    """Each report is a read, a publication and a store write right before Cursor's next commit
    can start: in rollback-journal mode they come at most once per ROLLBACK_GAP_MS, each on a
    commit seen after it, so a 100 ms flush rhythm costs one read per two commits and none of
    its commits is left unreported."""
    db = CursorDb(tmp_path / "state.vscdb", journal_mode="delete", tables=("ItemTable",))
    try:
        ends, reports = await _reports_while_writing(
            tmp_path, lambda i: db.write_batch({"k": f"v{i}"}), commits=20, interval_s=0.1
        )
    finally:
        db.close()
    assert reports[-1] >= ends[-1]  # the last commit was reported
    assert reports[-1] - ends[-1] <= (inotify_poll.ROLLBACK_MAX_HOLD_MS + 100) / 1000
    gaps = [b - a for a, b in itertools.pairwise(reports)]
    assert min(gaps) >= inotify_poll.ROLLBACK_GAP_MS / 1000 - 0.005
    assert len(reports) <= 20 // 2 + 2


async def test_a_database_without_a_journal_is_reported_on_every_commit(tmp_path: Path) -> None:
    """The hold is for rollback-journal databases only: others are reported as before."""
    db_file = tmp_path / "state.vscdb"
    ends, reports = await _reports_while_writing(
        tmp_path, lambda i: db_file.write_bytes(b"x" * (i + 1)), commits=10, interval_s=0.1
    )
    assert reports[-1] >= ends[-1]
    assert len(reports) >= 9
