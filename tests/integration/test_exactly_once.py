"""Exactly once onto the stream and into the store, through restarts and SIGKILLs.

``blueplane run`` as a child process on the test Redis (a private server, tests/conftest.py);
Cursor played by real SQLite files and, for the crash test, by ``bench/cursor_writer.py`` in
its own process with ``--ids-file`` (every committed generation id, fsynced), so the test knows
exactly what Cursor wrote whatever was killed when.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane.keys import watermark_key
from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import UserDir, make_generation, now_ms
from tests.integration.reliability_support import (
    project,
    store_generation_ids,
    stream_generation_ids,
    wait_for_polls_after_now,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "bench" / "cursor_writer.py"


def _fast(env: BlueplaneEnv) -> BlueplaneEnv:
    env.extra.update(
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.05",
        BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="0.2",
    )
    return env


def _ids(gens: list[dict[str, object]]) -> list[str]:
    return [str(g["generationUUID"]) for g in gens]


def _exactly_once(client: sync_redis.Redis, home: Path, expected: list[str]) -> None:
    want = Counter(expected)
    assert stream_generation_ids(client) == want
    assert store_generation_ids(home) == want
    # Every other trace (prompts too) is on the stream once and stored once.
    all_stream = stream_generation_ids(client, None)
    assert max(all_stream.values()) == 1
    assert store_generation_ids(home, None) == all_stream


@pytest.mark.parametrize("lose_watermarks", [False, True], ids=["kept", "watermarks-lost"])
def test_restart_inside_the_dedup_window_sends_nothing_twice(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
    lose_watermarks: bool,
) -> None:
    env = _fast(bp_env)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    first = _ids(ws.db.append_generations(3))
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    wait_until(lambda: sum(store_generation_ids(env.home).values()) == 3, what="3 stored")
    assert sp.stop() == 0
    if lose_watermarks:
        # Only the durable dedup keys are left to stop a re-send.
        assert redis_client.delete(watermark_key(str(ws.db_path))) == 1
    sp = ServerProcess(env).start()
    second = _ids(ws.db.append_generations(2))
    wait_until(lambda: sum(store_generation_ids(env.home).values()) >= 5, what="5 stored")
    wait_for_polls_after_now(env.home)  # a re-send would show up now
    assert sp.stop() == 0
    _exactly_once(redis_client, env.home, first + second)


def test_restart_after_a_stop_sends_everything_missed_within_the_sync_window(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
) -> None:
    env = _fast(bp_env)
    env.extra["BLUEPLANE_CURSOR_DATABASE_MONITOR__SYNC_WINDOW_HOURS"] = "1"
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    first = _ids(ws.db.append_generations(2))
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    wait_until(lambda: sum(store_generation_ids(env.home).values()) == 2, what="2 stored")
    assert sp.stop() == 0
    # While the server is down Cursor writes several batches, one item older than the window.
    missed: list[str] = []
    for _ in range(4):
        missed += _ids(ws.db.append_generations(3))
    too_old = make_generation(now_ms() - 2 * 3_600_000, "composer", "two hours ago")
    ws.db.append_generations([too_old])
    sp = ServerProcess(env).start()
    wait_until(
        lambda: sum(store_generation_ids(env.home).values()) == 14, what="12 missed caught up"
    )
    wait_for_polls_after_now(env.home)
    assert sp.stop() == 0
    _exactly_once(redis_client, env.home, first + missed)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    bp_env: BlueplaneEnv,
    redis_client: sync_redis.Redis,
    tmp_path: Path,
) -> None:
    env = _fast(bp_env)
    rng = random.Random(int(os.environ.get("BLUEPLANE_CRASH_SEED", "4")))
    kills = int(os.environ.get("BLUEPLANE_CRASH_KILLS", "24"))
    ws = UserDir(env.cursor_dirs[0]).add_workspace(project(tmp_path, "crash"))
    ws.db.close()
    ids_file = tmp_path / "written.ids"
    sp = ServerProcess(env).start()
    env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "crash-1")
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(ws.db_path), "--journal-mode", "delete",
         "--interval-ms", "40", "--duration", "600", "--cap", "100000",
         "--generations-per-batch", "2", "--ids-file", str(ids_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    killed_running = 0
    stored_between: list[int] = []
    try:
        sp.proc.kill()  # type: ignore[union-attr]
        sp.proc.wait()  # type: ignore[union-attr]
        for _ in range(kills):
            (env.home / "status.json").unlink(missing_ok=True)
            proc = subprocess.Popen(
                [sys.executable, "-m", "blueplane.cli", "run"],
                env=env.env(), stdout=(env.home / "server.log").open("ab"),
                stderr=subprocess.STDOUT, cwd=env.home,
            )  # fmt: skip
            time.sleep(rng.uniform(0.4, 3.0))
            try:
                state = json.loads((env.home / "status.json").read_text())["server"]["state"]
            except (OSError, ValueError, KeyError):
                state = "starting"
            killed_running += state == "running"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stored_between.append(sum(store_generation_ids(env.home).values()))
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=30)
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    written = ids_file.read_text().split()
    assert len(written) > 200
    final = ServerProcess(env).start()
    wait_until(
        lambda: set(store_generation_ids(env.home)) >= set(written),
        timeout=60,
        what=f"all {len(written)} generations in the store after the last restart",
    )
    wait_for_polls_after_now(env.home)
    assert final.stop() == 0
    on_stream = stream_generation_ids(redis_client)
    in_store = store_generation_ids(env.home)
    lost = [g for g in written if g not in in_store]
    dup_stream = {g: n for g, n in on_stream.items() if n > 1}
    dup_store = {g: n for g, n in in_store.items() if n > 1}
    figures = {
        "kills": kills,
        "kills_while_running": killed_running,
        "generations_written": len(written),
        "on_stream": len(on_stream),
        "in_store": len(in_store),
        "lost": len(lost),
        "duplicated_on_stream": len(dup_stream),
        "duplicated_in_store": len(dup_store),
        "seconds": round(time.monotonic() - started, 1),
    }
    print("crash test:", json.dumps(figures))
    report = os.environ.get("BLUEPLANE_RELIABILITY_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=2))
    assert killed_running >= kills // 2, figures  # most kills hit a running server
    assert stored_between[-1] > 0, "the server made progress between kills"
    assert not lost and not dup_stream and not dup_store, figures
    _exactly_once(redis_client, env.home, written)
