"""Faults: Redis away or restarted, Cursor's database locked, deleted, replaced or VACUUMed,
SIGTERM, and a live Cursor-like writer that must never see a busy error.

Tests that stop Redis run their own ``redis-server`` (``OwnRedis``: fixed port, append-only
file) and never touch the machine's. The others use the test Redis (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.db_poller import DatabasePoller
from blueplane.cursor.sqlite_ro import DatabaseLocked, ReadOnlyDatabase
from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import (
    CursorDb,
    UserDir,
    hold_lock,
    make_generation,
    snapshot_files,
)
from tests.integration.reliability_support import (
    OwnRedis,
    aof_tail,
    own_env,
    project,
    status_json,
    store_generation_ids,
    stream_generation_ids,
    wait_for_polls_after_now,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "bench" / "cursor_writer.py"
# How long the outage test keeps Redis down (BLUEPLANE_OUTAGE_SECONDS=120 for the long run).
OUTAGE_S = float(os.environ.get("BLUEPLANE_OUTAGE_SECONDS", "6"))


def _fast(env: BlueplaneEnv, **extra: str) -> BlueplaneEnv:
    env.extra.update(
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.05",
        BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="0.2",
        BLUEPLANE_REDIS__RECONNECT_BACKOFF_SECONDS="0.2",
    )
    env.extra.update(extra)
    return env


def _ids(gens: list[dict[str, object]]) -> list[str]:
    return [str(g["generationUUID"]) for g in gens]


def _stored(env: BlueplaneEnv) -> int:
    return sum(store_generation_ids(env.home).values())


def _component(env: BlueplaneEnv, name: str) -> str | None:
    return status_json(env.home).get("components", {}).get(name, {}).get("status")


def _assert_exactly_once(client: sync_redis.Redis, env: BlueplaneEnv, ids: list[str]) -> None:
    assert stream_generation_ids(client) == Counter(ids)
    assert store_generation_ids(env.home) == Counter(ids)


# --------------------------------------------------------------------------- Redis


@pytest.mark.slow
def test_redis_outage_waits_with_backoff_says_so_and_catches_up(
    tmp_path: Path,
    own_redis: OwnRedis,
) -> None:
    env = _fast(own_env(tmp_path, own_redis.url))
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    before = _ids(ws.db.append_generations(3))
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    wait_until(lambda: _stored(env) == 3, what="3 stored before the outage")
    log_mark = len(sp.log())

    own_redis.stop()
    down_at = time.monotonic()
    during = _ids(ws.db.append_generations(4))
    for name in ("database_monitor", "fast_path_consumer", "session_monitor"):
        wait_until(
            lambda n=name: _component(env, n) == "redis_unavailable",
            timeout=20,
            what=f"{name} to report redis_unavailable in status.json",
        )
    status = env.cli_json("status")
    assert status["running"] is True
    assert status["stream"]["reachable"] is False
    assert status["components"]["database_monitor"]["status"] == "redis_unavailable"
    text = env.cli("status").stdout
    assert "unreachable" in text and "redis_unavailable" in text
    during += _ids(ws.db.append_generations(3))
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    outage_log = sp.log()[log_mark:]
    # Backoff: a handful of warnings per component, not one per 50 ms poll.
    warnings = len(re.findall(r"Redis unavailable", outage_log))
    assert warnings <= 12 + OUTAGE_S / 2, f"{warnings} warnings:\n{outage_log[-3000:]}"

    own_redis.start()
    up_at = time.monotonic()
    wait_until(lambda: _stored(env) == 10, timeout=40, what="the 7 written during the outage")
    recovery_s = time.monotonic() - up_at
    for name in ("database_monitor", "fast_path_consumer"):
        wait_until(lambda n=name: _component(env, n) == "ok", what=f"{name} ok again")
    after = _ids(ws.db.append_generations(2))
    wait_until(lambda: _stored(env) == 12, what="new generations after recovery")
    wait_for_polls_after_now(env.home)
    assert sp.stop() == 0
    print(f"redis outage: down {OUTAGE_S:g} s, caught up {recovery_s:.2f} s after it came back")
    _assert_exactly_once(own_redis.client(), env, before + during + after)


@pytest.mark.slow
def test_redis_restarts_under_a_live_writer_lose_and_duplicate_nothing(
    tmp_path: Path,
    own_redis: OwnRedis,
) -> None:
    env = _fast(own_env(tmp_path, own_redis.url))
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    ws.db.close()
    ids_file = tmp_path / "ids"
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(ws.db_path), "--journal-mode", "delete",
         "--interval-ms", "50", "--duration", "12", "--cap", "10000", "--ids-file", str(ids_file)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for pause in (0.3, 1.5, 0.0):
        time.sleep(2.5)
        own_redis.stop()
        time.sleep(pause)
        own_redis.start()
    assert writer.wait(timeout=30) == 0
    written = ids_file.read_text().split()
    wait_until(
        lambda: set(store_generation_ids(env.home)) >= set(written),
        timeout=40,
        what="every written generation stored",
    )
    wait_for_polls_after_now(env.home)
    assert sp.stop() == 0
    _assert_exactly_once(own_redis.client(), env, written)


# --------------------------------------------------------------------------- locks


def test_lock_held_longer_than_the_timeout_is_retried_with_backoff_and_jitter(
    tmp_path: Path,
    redis_url: str,
) -> None:
    """The retry delays are ``backoff × 2^attempt × (0.5 + jitter)``, on a real locked file."""
    db = CursorDb(tmp_path / "state.vscdb", persistent=False)
    db.append_generations(1)
    jitters = iter([0.0, 0.9, 0.3, 0.7])
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    cfg = CursorDatabaseMonitorConfig(
        query_timeout_seconds=0.1, max_retries=3, retry_backoff_seconds=0.5
    )
    poller = DatabasePoller(
        cfg,
        None,  # type: ignore[arg-type]  # nothing is published: the read never succeeds
        sleep=sleep,
        jitter=lambda: next(jitters),
    )
    ro = ReadOnlyDatabase(db.path, cfg.query_timeout_seconds)
    with hold_lock(db.path, 10.0, "exclusive"), pytest.raises(DatabaseLocked):
        asyncio.run(poller._read_with_retries(ro, {}, "w"))
    assert slept == pytest.approx([0.25, 1.4, 1.6])


def test_locked_workspace_does_not_hold_up_the_others_and_catches_up(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
) -> None:
    env = _fast(
        bp_env,
        BLUEPLANE_CURSOR_DATABASE_MONITOR__QUERY_TIMEOUT_SECONDS="0.3",
        BLUEPLANE_CURSOR_DATABASE_MONITOR__RETRY_BACKOFF_SECONDS="0.5",
        BLUEPLANE_CURSOR_DATABASE_MONITOR__MAX_RETRIES="3",
    )
    ud = UserDir(env.cursor_dirs[0])
    locked = ud.add_workspace(project(tmp_path, "locked"))
    free = ud.add_workspace(project(tmp_path, "free"))
    locked_ids = _ids(locked.db.append_generations(2))
    locked.db.close()
    sp = ServerProcess(env).start()
    with hold_lock(locked.db_path, 30.0, "exclusive") as lock:
        env.cli("session", "start", "--workspace", str(locked.folder_path))
        env.cli("session", "start", "--workspace", str(free.folder_path))
        wait_until(
            lambda: status_json(env.home).get("workspaces", {}).get(locked.workspace_hash, {})
            .get("status") == "locked",
            what="the locked workspace reported as locked",
        )  # fmt: skip
        latencies = []
        free_ids: list[str] = []

        def locked_errors() -> int:
            return int(status_json(env.home)["workspaces"][locked.workspace_hash]["errors"])

        for _ in range(3):
            # each sample while the locked workspace is in another failed retry cycle
            seen = locked_errors()
            t0 = time.monotonic()
            free_ids += _ids(free.db.append_generations(1))
            want = len(free_ids)
            wait_until(lambda: _stored(env) == want, what="free workspace trace")  # noqa: B023
            latencies.append(time.monotonic() - t0)
            wait_until(lambda: locked_errors() > seen, what="another failed read of the locked")  # noqa: B023
        # A retry cycle of the locked one lasts ~4 × 0.3 s + 0.5 × (1+2+4) × jitter ≈ 2–4 s;
        # the free workspace must not wait for it.
        assert max(latencies) < 1.0, latencies
        ws = status_json(env.home)["workspaces"][locked.workspace_hash]
        assert ws["errors"] >= 1 and "locked" in ws["last_error"]
        lock.release()
    wait_until(lambda: _stored(env) == 5, what="the locked workspace to catch up")
    assert sp.stop() == 0
    _assert_exactly_once(redis_client, env, locked_ids + free_ids)


# --------------------------------------------------------------------------- files


def _fresh_db(path: Path, mode: str = "delete") -> CursorDb:
    return CursorDb(path, journal_mode=mode, persistent=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["deleted", "replaced", "vacuumed"])
def test_database_deleted_replaced_or_vacuumed_is_reread_from_the_right_place(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
    how: str,
) -> None:
    env = _fast(bp_env)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"), with_db=False)
    db = _fresh_db(ws.db_path)
    # A few other keys so VACUUM has rowids to renumber.
    for i in range(20):
        db.put(f"filler.{i}", "x" * 50)
    old = db.append_generations(3)
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    wait_until(lambda: _stored(env) == 3, what="3 stored")
    expected = _ids(old)
    if how == "deleted":
        ws.db_path.unlink()
        wait_until(
            lambda: status_json(env.home).get("workspaces", {}).get(ws.workspace_hash, {})
            .get("status") == "missing",
            what="missing database reported",
        )  # fmt: skip
        db = _fresh_db(ws.db_path)  # Cursor starts again from an empty database
        new = db.append_generations(2)
    elif how == "replaced":
        # A new file (new inode) moved over the old one: the old items plus two new ones,
        # written by the same number of writes so the key's rowid is the same as before.
        tmp = tmp_path / "new.vscdb"
        other = _fresh_db(tmp)
        for i in range(20):
            other.put(f"filler.{i}", "y" * 50)
        new = _new_gens(2)
        other.set_generations(old[1:] + new)
        assert other.rowid("aiService.generations") == db.rowid("aiService.generations")
        os.replace(tmp, ws.db_path)
    else:
        db.delete(*[f"filler.{i}" for i in range(20)])
        conn = sqlite3.connect(ws.db_path, isolation_level=None)
        conn.execute("VACUUM")
        conn.close()
        new = db.append_generations(2)
    expected += _ids(new)
    wait_until(lambda: _stored(env) == len(expected), what=f"new generations after {how}")
    wait_for_polls_after_now(env.home)
    assert sp.stop() == 0
    _assert_exactly_once(redis_client, env, expected)


def _new_gens(n: int) -> list[dict[str, object]]:
    return [make_generation(text=f"new {i}") for i in range(n)]


# --------------------------------------------------------------------------- stop


def test_sigterm_stops_within_5_s_with_everything_read_committed(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
) -> None:
    env = _fast(bp_env)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    ids: list[str] = []
    for _ in range(5):
        ids += _ids(ws.db.append_generations(20))
    # stop once the first burst is stored, while the rest is still in flight
    wait_until(lambda: _stored(env) >= 20, what="the first burst stored")
    t0 = time.monotonic()
    assert sp.stop(signal.SIGTERM) == 0
    took = time.monotonic() - t0
    assert took < 5.0, took
    assert status_json(env.home)["server"]["state"] == "stopped"
    # Nothing delivered to the consumer is left unacknowledged, and what is stored is on the
    # stream; whatever was published but not yet consumed is still on the stream.
    assert redis_client.xpending("telemetry:events", "blueplane-fast-path")["pending"] == 0
    stored = store_generation_ids(env.home)
    on_stream = stream_generation_ids(redis_client)
    assert set(stored) <= set(on_stream)
    # After a restart everything written is there exactly once.
    sp = ServerProcess(env).start()
    wait_until(lambda: _stored(env) == len(ids), what="all generations after restart")
    assert sp.stop() == 0
    _assert_exactly_once(redis_client, env, ids)


# --------------------------------------------------------------------------- zero impact


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_live_writer_sees_no_busy_error_and_the_file_keeps_its_mode(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
    mode: str,
) -> None:
    """A short zero-impact run (the full one is bench/zero_impact.py)."""
    env = _fast(bp_env)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"), journal_mode=mode)  # type: ignore[arg-type]
    ws.db.close()
    head = ws.db_path.read_bytes()[:100]
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path))
    report = tmp_path / "report.json"
    ids_file = tmp_path / "ids"
    subprocess.run(
        [sys.executable, str(WRITER), str(ws.db_path), "--journal-mode", mode,
         "--interval-ms", "20", "--duration", "6", "--report", str(report),
         "--ids-file", str(ids_file)],
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    r = json.loads(report.read_text())
    assert r["busy_errors"] == 0 and r["other_errors"] == 0, r
    written = ids_file.read_text().split()
    wait_until(lambda: _stored(env) == len(written), what="everything written captured")
    assert sp.stop() == 0
    after = ws.db_path.read_bytes()[:100]
    assert after[18:20] == head[18:20]  # journal mode (read/write format version bytes)
    assert after[60:64] == head[60:64] == (1).to_bytes(4, "big")  # user_version
    leftovers = {p for p in snapshot_files(ws.dir) if p.endswith(("-wal", "-shm", "-journal"))}
    if mode == "wal" and leftovers:
        # A read of ours that had the file open when the writer closed made the writer not the
        # last connection, so SQLite left its -wal/-shm (a read-only connection cannot remove
        # them). They are Cursor's own files, recovered by its next open: prove exactly that.
        assert {Path(p).name for p in leftovers} <= {"state.vscdb-wal", "state.vscdb-shm"}
        cursor = sqlite3.connect(ws.db_path)  # Cursor starting again
        cursor.execute("SELECT count(*) FROM ItemTable").fetchone()
        cursor.close()
        leftovers = {p for p in snapshot_files(ws.dir) if p.endswith(("-wal", "-shm", "-journal"))}
    assert not leftovers, leftovers  # the writer closed: nothing of ours remains


def test_a_redis_that_comes_back_without_its_last_writes_gets_them_again(
    tmp_path: Path,
    own_redis: OwnRedis,
) -> None:
    """A machine crash with ``appendfsync everysec`` loses Redis's last second: the stream
    entries, their dedup keys and the watermarks that covered them. The server must notice the
    restarted Redis and send what it lost again, once (found by bench/bench_crash.py)."""
    env = _fast(own_env(tmp_path, own_redis.url))
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    kept = _ids(ws.db.append_generations(3))
    sp = ServerProcess(env).start()
    try:
        env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
        client = own_redis.client()
        wait_until(lambda: set(kept) <= set(stream_generation_ids(client)), what="the first 3")
        size = aof_tail(own_redis).stat().st_size
        lost = _ids(ws.db.append_generations(4))
        wait_until(lambda: set(lost) <= set(stream_generation_ids(client)), what="4 more sent")
        assert sp.proc is not None
        sp.proc.send_signal(signal.SIGSTOP)  # frozen while Redis goes down and comes back
        own_redis.kill()
        with aof_tail(own_redis).open("r+b") as f:
            f.truncate(size)  # what the disk held when the machine went down
        own_redis.start().wait_loaded()
        client = own_redis.client()
        assert not set(lost) & set(stream_generation_ids(client))  # really lost
        sp.proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: set(lost) <= set(stream_generation_ids(client)),
            what="the lost generations sent again",
        )
        assert sp.stop() == 0
        on_stream = stream_generation_ids(client)
        assert all(on_stream[i] == 1 for i in kept + lost), on_stream
        assert "Redis restarted" in sp.log()
    finally:
        sp.kill()  # frozen or failed: never left behind
