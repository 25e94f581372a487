"""ChangeWatcher and the monitor's fallback: where file events cannot work, a fast poll does.

Real Redis, real SQLite files, the real ``watchfiles`` watcher; what is injected is the
file-system type (a 9p mount cannot be made here) or a watcher that fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from blueplane.cursor.change_watcher import ChangeWatcher, mount_fs_type
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.publisher import Publisher
from tests.conftest import async_wait_until
from tests.unit.test_database_monitor import STREAM, Rig


def _monitor(rig: Rig, watcher: ChangeWatcher) -> CursorDatabaseMonitor:
    return CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper,
        Publisher(rig.client, STREAM, 3600), rig.health, watcher=watcher,
    )  # fmt: skip


async def _run_until_captured(rig: Rig, mon: CursorDatabaseMonitor, ws: Any) -> dict[str, Any]:
    stop = asyncio.Event()
    task = asyncio.create_task(mon.run(stop))
    try:
        await rig.start(ws)
        await async_wait_until(lambda: rig.health.workspaces.get(ws.workspace_hash), "mapped")
        wh = rig.health.workspaces[ws.workspace_hash]
        await async_wait_until(lambda: wh.change_detection == "poll" and wh.database, "poll mode")
        gen = ws.db.append_generations(1)[0]

        async def captured() -> bool:
            return any(t["generation_id"] == gen["generationUUID"] for t in await rig.traces())

        await async_wait_until(captured, "the generation captured by the fallback poll")
        return {"reason": wh.change_detection_reason, "status": wh.status}
    finally:
        stop.set()
        await task


async def test_a_folder_on_a_network_mount_is_polled_and_status_says_why(
    tmp_path: Path, client
) -> None:
    rig = Rig(tmp_path, client, poll_interval_seconds=3600, fallback_poll_seconds=0.1)
    ws = rig.project("remote")
    folder = ws.db_path.parent
    watcher = ChangeWatcher(30, fs_type=lambda p: "9p" if p == folder else None)
    await rig.sessions.load()
    got = await _run_until_captured(rig, _monitor(rig, watcher), ws)
    assert got["reason"] is not None and "9p" in got["reason"]
    assert watcher.mode(folder) == "poll"


async def test_a_watcher_that_dies_falls_back_to_polling(tmp_path: Path, client) -> None:
    async def dying_watch(*paths: Path, **_kw: Any) -> AsyncIterator[set[Any]]:
        raise OSError(28, "OS file watch limit reached")
        yield set()  # pragma: no cover  (makes this an async generator)

    rig = Rig(tmp_path, client, poll_interval_seconds=3600, fallback_poll_seconds=0.1)
    ws = rig.project("p")
    watcher = ChangeWatcher(30, watch=dying_watch)
    await rig.sessions.load()
    got = await _run_until_captured(rig, _monitor(rig, watcher), ws)
    assert "watch limit" in (got["reason"] or "")


async def test_a_write_to_a_watched_database_is_reported_for_its_folder(tmp_path: Path) -> None:
    from tests.fixtures.cursor_db import UserDir

    ud = UserDir(tmp_path / "User")
    ud.workspace_storage.mkdir(parents=True)
    folder = tmp_path / "proj"
    folder.mkdir()
    ws = ud.add_workspace(str(folder), journal_mode="wal")
    watcher = ChangeWatcher(20)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        watcher.set_dirs({ws.db_path.parent})
        await async_wait_until(lambda: watcher.mode(ws.db_path.parent) == "events", "watching")
        watcher.take()
        ws.db.append_generations(1)
        await async_wait_until(lambda: watcher.wake.is_set(), "an event for the write")
        assert watcher.take() == {ws.db_path.parent}
    finally:
        stop.set()
        await task


def test_mount_type_is_read_from_mountinfo(tmp_path: Path) -> None:
    kind = mount_fs_type(tmp_path)
    if kind is None:
        pytest.skip("no /proc/self/mountinfo on this platform")
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        assert kind in {line.split(" - ")[1].split()[0] for line in fh}


async def test_a_burst_of_new_folders_restarts_the_watch_once(tmp_path: Path) -> None:
    """A first sync maps workspaces one after another: the watch restarts once for the lot,
    not once per folder (each restart re-adds every watch), and ends up on every folder."""
    folders = [tmp_path / f"ws{i}" for i in range(12)]
    for f in folders:
        f.mkdir()
    started: list[set[Path]] = []

    async def quiet_watch(
        *paths: Path, stop_event: asyncio.Event, **_kw: Any
    ) -> AsyncIterator[set[Any]]:
        started.append(set(paths))
        await stop_event.wait()
        return
        yield set()  # pragma: no cover  (makes this an async generator)

    watcher = ChangeWatcher(30, watch=quiet_watch)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        watcher.set_dirs({folders[0]})
        await async_wait_until(lambda: started == [{folders[0]}], "the first watch")
        for n in range(2, len(folders) + 1):
            watcher.set_dirs(set(folders[:n]))
            for _ in range(5):  # let the loop run: the old watcher restarted right away
                await asyncio.sleep(0)
        await async_wait_until(lambda: started[-1] == set(folders), "the watch on every folder")
        assert len(started) == 2, [len(s) for s in started]
        assert watcher.starts == 2
    finally:
        stop.set()
        await task
