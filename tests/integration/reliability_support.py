"""Shared pieces of the reliability tests (issue 4): a restartable Redis, counting helpers.

Tests that stop Redis start their own ``redis-server`` on a fixed port with an append-only
file, so it can be stopped and started again on the same port with its data.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "always",
        binary: Path | None = None,
    ) -> None:
        # "always" by default: the tests count every write; bench/bench_crash.py passes the
        # bundled server's own "everysec" to measure what a Redis SIGKILL really costs.
        self.server = BundledRedis(
            data_dir, port=port or free_port(), appendfsync=appendfsync, binary=binary
        )

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

    def wait_loaded(self, timeout: float = 30.0) -> None:
        """Until Redis has loaded its AOF (it accepts connections, then answers LOADING)."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                try:
                    c.ping()
                    return
                except sync_redis.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Redis fsyncs its AOF before exiting."""
        self.server.stop()

    def kill(self) -> None:
        """SIGKILL: no AOF fsync on the way out (what a crash or an OOM kill does)."""
        proc = self.server.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

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


def stream_trace_fields(client: sync_redis.Redis) -> Iterator[dict[str, str]]:
    """The fields of every ``database_trace`` entry on the stream, paged, in stream order."""
    last = "-"
    while True:
        batch = client.xrange(STREAM, min=last, max="+", count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return
        for _id, fields in batch:
            if fields.get("event_type") == "database_trace":
                yield fields
        last = batch[-1][0]


def stream_generation_ids(
    client: sync_redis.Redis, trace_type: str | None = "generation"
) -> Counter[str]:
    """How many times each generation id is on the stream as a ``database_trace``.

    ``trace_type=None`` counts every trace by ``event_id`` instead (prompts included).
    """
    out: Counter[str] = Counter()
    for fields in stream_trace_fields(client):
        payload = json.loads(fields["payload"])
        if trace_type is None:
            out[fields["event_id"]] += 1
        elif payload.get("trace_type") == trace_type:
            out[payload["generation_id"]] += 1
    return out


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


@dataclass(frozen=True)
class TraceEntry:
    """One ``database_trace`` as seen on the stream or in the store, for duplicate counts."""

    event_id: str
    trace_type: str
    generation_id: str
    item_key: str
    revision: int
    workspace_hash: str


def stream_traces(client: sync_redis.Redis) -> list[TraceEntry]:
    """Every ``database_trace`` entry on the stream, in stream order (duplicates kept)."""
    out: list[TraceEntry] = []
    for fields in stream_trace_fields(client):
        p = json.loads(fields["payload"])
        meta = json.loads(fields.get("metadata") or "{}")
        gen = str(p.get("generation_id"))
        out.append(
            TraceEntry(
                event_id=fields["event_id"],
                trace_type=str(p.get("trace_type")),
                generation_id=gen,
                item_key=str(p.get("item_id") or gen),
                revision=int(p.get("revision") or 0),
                workspace_hash=str(meta.get("workspace_hash")),
            )
        )
    return out


def store_traces(home: Path) -> list[TraceEntry]:
    """Every ``database_trace`` row of the store, read read-only (the server may be running)."""
    import sqlite3

    db = home / "telemetry.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT event_id, trace_type, generation_id, item_key, revision, workspace_hash"
            " FROM events"
            " WHERE event_type='database_trace'"
        ).fetchall()
    finally:
        conn.close()
    return [
        TraceEntry(str(e), str(t), str(g), str(k or g), int(r or 0), str(w))
        for e, t, g, k, r, w in rows
    ]


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


def aof_tail(redis: OwnRedis) -> Path:
    """The AOF file Redis appends to (Redis 7: the last ``type i`` file of the manifest;
    Redis 6: ``appendonly.aof`` itself)."""
    folder = redis.server.data_dir / "appendonlydir"
    if not folder.is_dir():
        return next(redis.server.data_dir.glob("*.aof"))
    manifest = next(folder.glob("*.manifest")).read_text().split("\n")
    incr = [line.split()[1] for line in manifest if line.endswith("type i")]
    return folder / incr[-1]
