"""``blueplane run`` yields to Cursor: every thread, the ones that read Cursor's databases
included, runs at nice 10 and the lowest best-effort I/O level (``background_priority``).

The threads are inspected in the real server process through ``/proc/<pid>/task/<tid>/stat``
and ``ioprio_get``, after a generation written to a workspace was captured (so the reader
threads exist and have read).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane import priority
from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import UserDir
from tests.integration.reliability_support import stream_trace_fields

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux thread priorities"),
]


def _threads(pid: int) -> dict[int, tuple[int, tuple[int, int] | None]]:
    """Every thread of ``pid``: its nice value and its I/O (class, level)."""
    out = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        tid = int(entry)
        try:
            out[tid] = (priority.thread_nice(tid, pid), priority.io_priority(tid))
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return out


def _captured_with_threads(
    env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path
) -> dict[int, tuple[int, tuple[int, int] | None]]:
    folder = tmp_path / "projects" / "p"
    folder.mkdir(parents=True)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(str(folder))
    sp = ServerProcess(env).start()
    try:
        env.cli("session", "start", "--workspace", str(folder))
        ids = {g["generationUUID"] for g in ws.db.append_generations(2)}

        def captured() -> bool:
            return sum(1 for f in stream_trace_fields(redis_client) if any(
                i in f["payload"] for i in ids)) == len(ids)  # fmt: skip

        wait_until(captured, what="the generations read and published")
        assert sp.proc is not None
        threads = _threads(sp.proc.pid)
    finally:
        assert sp.stop() == 0
    # the event loop and the reader/writer threads it started (no watch thread: on Linux the
    # quiet inotify watch runs in the event loop)
    assert len(threads) >= 2, threads
    return threads


def test_every_server_thread_runs_at_background_priority(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    threads = _captured_with_threads(bp_env, redis_client, tmp_path)
    for tid, (nice, io) in threads.items():
        assert nice == max(base, priority.NICE), (tid, nice)
        if io is not None and io[0] != 3:  # an idle I/O class inherited from us stays idle
            assert io == (priority.IOPRIO_CLASS_BE, priority.IOPRIO_LOWEST_LEVEL), (tid, io)


def test_background_priority_false_keeps_normal_priority(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    bp_env.extra["BLUEPLANE_BACKGROUND_PRIORITY"] = "false"
    base = os.getpriority(os.PRIO_PROCESS, 0)
    threads = _captured_with_threads(bp_env, redis_client, tmp_path)
    assert {nice for nice, _io in threads.values()} == {base}
