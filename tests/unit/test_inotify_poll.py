"""The timer-read inotify watch: it sees Cursor's writes, and no thread of ours waits for them.

Real files written the way Cursor writes them; the watch runs in this event loop.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from watchfiles import Change, awatch

from blueplane.cursor import inotify_poll
from blueplane.cursor.change_watcher import _db_file
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.publisher import Publisher
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
