"""One ``blueplane run`` per home and Redis, and what the server says about Redis at start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis as sync_redis

from blueplane.instance_lock import LOCK_TTL_S, Holder
from blueplane.keys import lock_key
from tests.conftest import BlueplaneEnv, ServerProcess, wait_until

pytestmark = pytest.mark.integration


def _run_once(env: BlueplaneEnv) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blueplane.cli", "run"],
        env=env.env(), capture_output=True, text=True, timeout=60, cwd=env.home,
    )  # fmt: skip


def _status_server(env: BlueplaneEnv) -> dict[str, object]:
    try:
        return json.loads((env.home / "status.json").read_text())["server"]
    except (OSError, ValueError, KeyError):
        return {}


def test_second_run_exits_1_naming_the_holder(
    server: Callable[[], ServerProcess], bp_env: BlueplaneEnv
) -> None:
    first = server()
    assert first.proc is not None
    second = _run_once(bp_env)
    assert second.returncode == 1, second.stderr
    assert f"pid {first.proc.pid} on {socket.gethostname()} since" in second.stderr
    assert "already runs" in second.stderr
    # The first keeps running and keeps its status file.
    assert first.proc.poll() is None
    status = json.loads((bp_env.home / "status.json").read_text())
    assert status["server"]["pid"] == first.proc.pid
    assert status["server"]["state"] == "running"


def test_lock_of_a_killed_server_is_taken_over_at_once(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis
) -> None:
    first = ServerProcess(bp_env).start()
    assert first.proc is not None
    first.kill()  # SIGKILL: no release
    key = lock_key(bp_env.home)
    held = Holder.decode(redis_client.get(key) or "")
    assert held is not None and held.pid == first.proc.pid
    assert redis_client.pttl(key) > 0  # still there: only the dead pid makes it stale
    started = time.monotonic()
    second = ServerProcess(bp_env).start()
    try:
        assert second.proc is not None
        # status.json still names the dead first server: wait for the second's own.
        wait_until(lambda: _status_server(bp_env).get("pid") == second.proc.pid, timeout=20)
        wait_until(lambda: _status_server(bp_env).get("state") == "running", timeout=20)
        assert time.monotonic() - started < LOCK_TTL_S  # did not wait for the TTL
        now = Holder.decode(redis_client.get(key) or "")
        assert now is not None and now.pid == second.proc.pid
        assert "took over the instance lock" in second.log()
    finally:
        assert second.stop() == 0
    assert not redis_client.exists(key)  # a clean stop releases it


def test_evicting_redis_is_warned_once_and_shown_in_status(
    server: Callable[[], ServerProcess], bp_env: BlueplaneEnv, redis_client: sync_redis.Redis
) -> None:
    before = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        sp = server()
        st = bp_env.cli_json("status")
    finally:
        redis_client.config_set("maxmemory-policy", before)
    assert st["server"]["redis_maxmemory_policy"] == "allkeys-lru"
    assert any("allkeys-lru" in w for w in st["server"]["warnings"])
    assert sp.log().count("maxmemory-policy is allkeys-lru") == 1
    human = bp_env.cli("status").stdout
    assert "warning: Redis maxmemory-policy is allkeys-lru" in human


def test_noeviction_redis_has_no_warning(
    server: Callable[[], ServerProcess], bp_env: BlueplaneEnv
) -> None:
    server()
    st = bp_env.cli_json("status")
    assert st["server"]["redis_maxmemory_policy"] == "noeviction"
    assert st["server"]["redis_version"]
    assert "warnings" not in st["server"]
