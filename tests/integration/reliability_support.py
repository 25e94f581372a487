"""Shared pieces of the reliability tests (issue 4): a restartable Redis, counting helpers.

Tests that stop Redis start their own ``redis-server`` on a fixed port with an append-only
file, so it can be stopped and started again on the same port with its data.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as sync_redis

from blueplane.broker import BundledRedis
from tests.conftest import BlueplaneEnv, wait_until

STREAM = "telemetry:events"
DEAD_LETTER = "telemetry:dead_letter"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """The bundled server, which a test may stop and start again on the same port with its data."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.server = BundledRedis(data_dir, port=port or free_port(), appendfsync="always")

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.server.start()
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Redis fsyncs its AOF before exiting."""
        self.server.stop()

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.url, decode_responses=True)


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


def wait_for_polls_after_now(home: Path, timeout: float = 15.0) -> None:
    """Wait until the server has checked every monitored workspace again after this moment.

    Replaces "sleep, then assert nothing was re-sent": on a slow machine a fixed sleep may
    cover no poll at all, and the assertion then checks nothing. ``last_check`` is stamped at
    every read cycle (even of an unchanged database) and shows in ``status.json`` at its next
    write (every 2 s), so a later ``last_check`` proves a poll ran over the current state.
    """
    since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def all_checked_again() -> bool:
        workspaces = status_json(home).get("workspaces", {})
        return bool(workspaces) and all(
            (w.get("last_check") or "") > since for w in workspaces.values()
        )

    wait_until(all_checked_again, timeout=timeout, what=f"every workspace polled after {since}")
