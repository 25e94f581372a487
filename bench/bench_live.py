"""Benchmark: the real ``blueplane run`` on 100 live workspaces and a 1 GB global database.

One command for issue 8. For each configuration it builds a fake Cursor ``User`` folder under a
fresh temp dir, starts a private ``redis-server`` on a free loopback port and the real server as
its own process (``.venv/bin/blueplane run``, **no configuration file**: environment only), sends
``session_start`` for every workspace exactly as ``blueplane session start`` does, and measures
the server process:

- **first sync**: trace entries published per second while the server syncs everything (from the
  first to the last trace's stream id), against a raw redis-py pipelined ``XADD`` loop of the
  same entries (real ones, re-added to another stream) in the same run;
- **consumer → store**: the store (``BLUEPLANE_HOME/telemetry.db``, read read-only) filling
  during the sync, and on a backlog: the server is stopped, the store deleted, the consumer
  group rewound to ``0`` and the server restarted — events stored per second;
- **capture latency** commit → ``XADD`` (the entry id's milliseconds minus the wall time right
  after ``COMMIT``), p50/p99, for (a) a generation appended to a random workspace's
  ``aiService.generations`` (one VS Code batch) and (b) a streamed assistant bubble in the
  global database (rewritten with growing text; the last write carries
  ``timingInfo.clientEndTime``). Samples are spaced 300–500 ms apart; a sample not on the
  stream within its timeout counts as a miss;
- **idle CPU**: ``utime + stime`` of the server process over a window with nothing changing, as %
  of one core;
- **RSS**: ``VmRSS`` and peak ``VmHWM`` after all that, with the dedup window full.

Configurations: ``default`` (no configuration: file events on, 30 s safety poll) and
``comparison`` (``watch_files=false``, 1 s poll). The built global database is cached in
``BLUEPLANE_BENCH_LIVE_CACHE`` (default ``/tmp/blueplane-bench-live``) and copied per run; all
else is removed at the end.

    .venv/bin/python bench/bench_live.py            # full: 100 workspaces, 1 GB (~15-20 min)
    .venv/bin/python bench/bench_live.py --quick    # 10 workspaces, 50 MB, 20 samples (~3 min)

Writes ``bench/results/live.json`` (``live-quick.json`` for ``--quick``) and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.fixtures.cursor_db import (  # noqa: E402
    GENERATIONS_KEY,
    CursorDb,
    UserDir,
    make_assistant_bubble,
    make_generation,
    make_user_bubble,
    make_user_dir,
    make_workspace_identifier,
    now_ms,
)

from bench_global_db import build as build_global_db  # noqa: E402
from blueplane.broker import BundledRedis  # noqa: E402
from blueplane.config import FastPathConfig  # noqa: E402
from blueplane.events import SessionEvent  # noqa: E402
from cursor_writer import percentile  # noqa: E402

STREAM = "telemetry:events"
RAW_STREAM = "bench:raw-xadd"
GROUP = FastPathConfig().group
CACHE = Path(os.environ.get("BLUEPLANE_BENCH_LIVE_CACHE", "/tmp/blueplane-bench-live"))
BLUEPLANE = ROOT / ".venv" / "bin" / "blueplane"
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_GAP_S = 0.25  # a pause longer than this between two traces is waiting, not publishing

TARGETS = {
    "sync_ratio_pct": ">= 50 %",
    "store_per_s": ">= 20,000/s",
    "p50_ms": "<= 100 ms",
    "p99_ms": "<= 250 ms",
    "idle_cpu_pct": "<= 0.5 %",
    "rss_mb": "<= 100 MB",
}


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark setup (full or ``--quick``)."""

    name: str
    workspaces: int
    generations: int  # ring per workspace (Cursor caps it at 100)
    composers: int  # old conversations in the cached global database
    bubbles_per_composer: int
    bubble_text: int  # characters per old bubble
    min_bytes: int  # the cached global database is reused when at least this big
    recent_composers: int  # per workspace, written at each run (inside the sync window)
    recent_bubbles: int  # per recent composer
    samples: int  # latency samples of each kind
    idle_s: float
    sync_timeout_s: float


FULL = Setup("full", 100, 100, 600, 105, 16_000, 950_000_000, 2, 50, 50, 60.0, 1200.0)
QUICK = Setup("quick", 10, 100, 100, 105, 4_600, 45_000_000, 2, 20, 20, 15.0, 300.0)

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "comparison": {
        "BLUEPLANE_CURSOR_DATABASE_MONITOR__WATCH_FILES": "false",
        "BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS": "1",
    },
}
SAFETY_POLL_S = {"default": 30.0, "comparison": 1.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def workspace_specs(n: int) -> list[tuple[str, str]]:
    """Deterministic ``(storage id, folder)`` pairs, so the cached global DB's attribution holds."""
    return [
        (
            hashlib.md5(f"blueplane-bench-live/{i}".encode()).hexdigest(),
            str(CACHE / "projects" / f"ws-{i:03d}"),
        )
        for i in range(n)
    ]


def cached_global_db(setup: Setup) -> Path:
    """The old history (outside the sync window), built once by bench_global_db's builder."""
    specs = workspace_specs(setup.workspaces)
    path = CACHE / f"global-{setup.name}-v1.vscdb"
    if not (path.is_file() and path.stat().st_size >= setup.min_bytes):
        log(f"building {path} (once; cached for later runs)")
    return build_global_db(
        specs[0][0],
        specs[0][1],
        path=path,
        composers=setup.composers,
        bubbles_per_composer=setup.bubbles_per_composer,
        bubble_text=setup.bubble_text,
        recent=0,
        min_bytes=setup.min_bytes,
        workspaces=specs,
    )


# --------------------------------------------------------------------------- the User folder


@dataclass
class Workspace:
    storage_id: str
    folder: str
    db: CursorDb
    composers: list[str] = field(default_factory=list)  # recent composer ids (global DB)


@dataclass
class Fixture:
    """A fake Cursor ``User`` folder and the ids the server must publish from it."""

    root: Path
    user: UserDir
    global_db: CursorDb
    workspaces: list[Workspace]
    generation_ids: set[str]
    bubble_ids: set[str]
    global_bytes: int
    old_bubbles: int

    def close(self) -> None:
        self.user.close()
        self.global_db.close()


def make_fixture(setup: Setup, root: Path, cached: Path) -> Fixture:
    """100 workspaces with a full generations ring, the 1 GB global DB and recent chats."""
    user = make_user_dir(root)
    now = now_ms()
    workspaces: list[Workspace] = []
    gen_ids: set[str] = set()
    for i, (sid, folder) in enumerate(workspace_specs(setup.workspaces)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        ws = user.add_workspace(folder, storage_id=sid, with_db=False)
        ring = [
            make_generation(now - (setup.generations - j) * 1000 - i, "composer", f"ws {i} gen {j}")
            for j in range(setup.generations)
        ]
        ws.db.write_batch({GENERATIONS_KEY: ring})
        gen_ids.update(g["generationUUID"] for g in ring)
        workspaces.append(Workspace(sid, folder, ws.db))
    gpath = user.global_storage / "state.vscdb"
    shutil.copyfile(cached, gpath)
    # Like the Cursor process, keep one connection open: in WAL mode the -wal file then stays.
    gdb = CursorDb(gpath, "wal", tables=("ItemTable", "cursorDiskKV"), persistent=True)
    bubble_ids: set[str] = set()
    for ws in workspaces:
        for _ in range(setup.recent_composers):
            bubbles = [
                make_user_bubble(f"question {k}") if k % 2 == 0 else make_assistant_bubble(f"a{k}")
                for k in range(setup.recent_bubbles)
            ]
            composer = gdb.put_conversation(
                bubbles, workspaceIdentifier=make_workspace_identifier(ws.storage_id, ws.folder)
            )
            ws.composers.append(composer["composerId"])
            bubble_ids.update(b["bubbleId"] for b in bubbles)
    return Fixture(
        root,
        user,
        gdb,
        workspaces,
        gen_ids,
        bubble_ids,
        gpath.stat().st_size,
        setup.composers * setup.bubbles_per_composer,
    )


# --------------------------------------------------------------------------- the server process


def _proc_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _proc_mem_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


class ServerProcess:
    """``blueplane run`` as a child process in its own process group, stderr to a log file."""

    def __init__(self, root: Path, env: dict[str, str], binary: Path = BLUEPLANE) -> None:
        self.root = root
        self.env = env
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"
        self.status_path = Path(env["BLUEPLANE_HOME"]) / "status.json"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(self.binary), "run"],
                cwd=self.root,  # no config/blueplane.yaml here: no configuration at all
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"blueplane run exited {self.proc.returncode}: {self.tail()}")
            try:
                status = json.loads(self.status_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                status = {}
            server = status.get("server") if isinstance(status, dict) else None
            running = isinstance(server, dict) and server.get("state") == "running"
            if running and server.get("pid") == self.proc.pid:  # type: ignore[union-attr]
                return
            time.sleep(0.1)
        raise RuntimeError(f"blueplane run not running after {timeout_s} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log("blueplane run did not stop within 15 s of SIGTERM: SIGKILL")
            self.proc.kill()
            self.proc.wait(timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- stream helpers


def server_env(
    home: Path, url: str, fixture: Fixture, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The server's environment: no ``BLUEPLANE_*`` of ours leaks in, only the fixture's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(home),
        BLUEPLANE_REDIS_URL=url,
        BLUEPLANE_CURSOR_DIRS=str(fixture.user.path),
        **(extra or {}),
    )
    return env


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def entry_ms(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def entries_added(r: redis.Redis) -> int:
    """Every XADD ever made to the stream (trimming does not lower it)."""
    try:
        info = r.xinfo_stream(STREAM)
    except redis.ResponseError:
        return 0
    return int(info.get("entries-added", info["length"]))  # Redis < 7: length (no trim < 100k)


def scan_stream(r: redis.Redis, start: str = "-") -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """Every entry from ``start``, page by page."""
    while True:
        page = r.xrange(STREAM, start, "+", count=5000)
        if not page:
            return
        for eid, fields in page:
            yield _text(eid), fields
        last = _text(page[-1][0])
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def trace_key(fields: dict[bytes, bytes]) -> tuple[str, str, bool] | None:
    """``(kind, id, settled)`` of a trace entry: a generation id or a bubble id."""
    if fields.get(b"event_type") != b"database_trace":
        return None
    try:
        payload = json.loads(fields.get(b"payload", b"{}"))
    except ValueError:
        return None
    kind = payload.get("trace_type")
    if kind == "generation":
        return "generation", str(payload.get("generation_id")), True
    if kind == "message" and payload.get("bubble_id"):
        return "message", str(payload["bubble_id"]), payload.get("client_end_time_ms") is not None
    return None


class StoreReader:
    """Counts the store's rows through a read-only connection (our file, never Cursor's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> tuple[Any, ...]:
        if not self.path.exists():
            return ()
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.OperationalError:
            return ()
        try:
            row = conn.execute(sql).fetchone()
            return tuple(row) if row else ()
        except sqlite3.OperationalError:
            return ()  # not created yet
        finally:
            conn.close()

    def count(self) -> int:
        row = self.query("SELECT COUNT(*) FROM events")
        return int(row[0]) if row else 0

    def span(self) -> tuple[int, int, int]:
        """(rows, first received_at_ms, last received_at_ms)."""
        row = self.query("SELECT COUNT(*), MIN(received_at_ms), MAX(received_at_ms) FROM events")
        if not row or not row[0]:
            return 0, 0, 0
        return int(row[0]), int(row[1]), int(row[2])


# --------------------------------------------------------------------------- phases


def send_sessions(r: redis.Redis, fixture: Fixture) -> int:
    """``session_start`` per workspace, the same entry ``blueplane session start`` XADDs."""
    pipe = r.pipeline(transaction=False)
    for i, ws in enumerate(fixture.workspaces):
        pipe.xadd(STREAM, SessionEvent.build("session_start", ws.folder, f"bench-{i}").to_fields())
    pipe.execute()
    return len(fixture.workspaces)


def first_sync(
    r: redis.Redis,
    store: StoreReader,
    fixture: Fixture,
    setup: Setup,
    safety_poll_s: float,
    pid: int | None = None,
    profile: Path | None = None,
    profile_format: str = "speedscope",
) -> dict[str, Any]:
    """Sessions for every workspace, then wait until every expected item is published and
    stored (or nothing grows for four safety polls); rates from the entries' own times.

    With ``pid``, the server's CPU time (utime + stime) until the last item is published and
    until the store holds everything, per item. With ``profile``, ``py-spy record`` samples the
    server until then: speedscope JSON of the GIL holder's stacks at that path, or with
    ``profile_format`` ``chrometrace`` every thread's stack (waiting ones too) with its time,
    so the phases of the sync and what each thread waits on can be told apart)."""
    spy: subprocess.Popen[bytes] | None = None
    if profile is not None and pid is not None:
        which = "--idle" if profile_format == "chrometrace" else "--gil"
        spy = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid), "--rate", "250",
             "--format", profile_format, "--output", str(profile), "--threads", which],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached before the first session
    base = entries_added(r)
    cpu0 = _proc_cpu_ticks(pid) if pid is not None else 0
    t0 = time.time()
    sessions = send_sessions(r, fixture)
    expected = len(fixture.generation_ids) + len(fixture.bubble_ids)
    # A 1 GB catch-up reads old rows (outside the sync window) for a few polls that publish
    # nothing; give up only after several quiet safety polls.
    stall_s = max(60.0, 4 * safety_poll_s + 15.0)
    last_pub, last_growth, checked_at = -1, time.monotonic(), 0
    missing: dict[str, int] = {}
    complete = False
    # (s, published, stored, CPU ticks, RSS MB)
    samples: list[tuple[float, int, int, int, float]] = []
    ticks = (lambda: _proc_cpu_ticks(pid) - cpu0) if pid is not None else (lambda: 0)
    rss = (lambda: _proc_mem_mb(pid)["VmRSS"]) if pid is not None else (lambda: 0.0)
    deadline = time.monotonic() + setup.sync_timeout_s
    while time.monotonic() < deadline:
        pub = entries_added(r) - base - sessions
        stored = store.count()
        samples.append((round(time.time() - t0, 2), pub, stored, ticks(), rss()))
        if pub != last_pub:
            last_pub, last_growth = pub, time.monotonic()
        quiet = time.monotonic() - last_growth
        if pub >= expected and quiet >= 2.0 and pub != checked_at:
            checked_at = pub
            missing = _missing(r, fixture)
            if not any(missing.values()):
                complete = True
                break
        if quiet > stall_s:
            break
        time.sleep(0.2)
    cpu_pub = _proc_cpu_ticks(pid) - cpu0 if pid is not None else 0
    if not complete:
        missing = _missing(r, fixture)
    # The store: until it holds every entry on the stream, or stops growing for 10 s.
    total = int(r.xlen(STREAM))
    last_stored, since = -1, time.monotonic()
    while time.monotonic() - since < 10.0:
        stored = store.count()
        now_s = round(time.time() - t0, 2)
        samples.append((now_s, entries_added(r) - base - sessions, stored, ticks(), rss()))
        if stored >= total:
            break
        if stored != last_stored:
            last_stored, since = stored, time.monotonic()
        time.sleep(0.2)
    cpu_all = _proc_cpu_ticks(pid) - cpu0 if pid is not None else 0
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(timeout=60)
    # Rates from the stream ids (Redis' clock) and the store's received_at_ms.
    trace_ms: list[int] = []
    by_kind: dict[str, list[int]] = {}  # first and last trace time of each kind
    for eid, f in scan_stream(r):
        if f.get(b"event_type") == b"database_trace":
            ms = entry_ms(eid)
            trace_ms.append(ms)
            key = trace_key(f)
            span = by_kind.setdefault(key[0] if key else "other", [ms, ms, 0])
            span[0], span[1], span[2] = min(span[0], ms), max(span[1], ms), span[2] + 1
    n = len(trace_ms)
    span_s = (max(trace_ms) - min(trace_ms)) / 1000 if n > 1 else 0.0
    # Busy time: gaps between consecutive traces count up to BUSY_GAP_S, so waiting for the
    # next poll is left out and what remains is the publishing throughput itself.
    trace_ms.sort()
    busy_s = sum(min(b - a, BUSY_GAP_S * 1000) for a, b in itertools.pairwise(trace_ms)) / 1000
    # CPU while publishing: from the last sample before the first trace to the first sample
    # after the last one (a 0.2 s grain on each side).
    span_cpu = None
    if n and pid is not None:
        first_s, last_s = min(trace_ms) / 1000 - t0, max(trace_ms) / 1000 - t0
        before = [c for s, _, _, c, _ in samples if s <= first_s]
        after = [c for s, _, _, c, _ in samples if s >= last_s]
        if after:
            span_cpu = (after[0] - (before[-1] if before else 0)) / CLK_TCK
    rows, first_rx, last_rx = store.span()
    store_span_s = (last_rx - first_rx) / 1000 if rows > 1 else 0.0
    return {
        "complete": complete,
        "expected_items": expected,
        "missing": missing,
        "traces_published": n,
        "publish_span_s": round(span_s, 2),
        "first_trace_after_s": round(min(trace_ms) / 1000 - t0, 2) if n else None,
        "wall_s": round(max(trace_ms) / 1000 - t0, 2) if n else None,
        "published_per_s": round(n / span_s) if span_s else None,
        "by_kind_s": {  # seconds after the sessions were sent: first, last trace; count
            k: [round(a / 1000 - t0, 2), round(b / 1000 - t0, 2), c]
            for k, (a, b, c) in by_kind.items()
        },
        "busy_s": round(busy_s, 2),
        "busy_published_per_s": round(n / busy_s) if busy_s else None,
        "stored_rows": rows,
        "store_span_s": round(store_span_s, 2),
        "stored_per_s_during_sync": round(rows / store_span_s) if store_span_s else None,
        # Server CPU (s) from the sessions to the last publication (its 2 s quiet check
        # included) and to the full store, and per expected item (us).
        "cpu_s_publish": round(cpu_pub / CLK_TCK, 2),
        "cpu_s_stored": round(cpu_all / CLK_TCK, 2),
        "cpu_us_per_item_publish": round(cpu_pub / CLK_TCK * 1e6 / expected, 1),
        "cpu_s_publish_span": round(span_cpu, 2) if span_cpu is not None else None,
        "cpu_us_per_item_publish_span": (
            round(span_cpu * 1e6 / n, 1) if span_cpu is not None and n else None
        ),
        "cpu_us_per_item_stored": round(cpu_all / CLK_TCK * 1e6 / expected, 1),
        "memory_mb_after_sync": _proc_mem_mb(pid) if pid is not None else None,
        "timeline": samples[:: max(1, len(samples) // 200)],
    }


def _missing(r: redis.Redis, fixture: Fixture) -> dict[str, int]:
    gens = set(fixture.generation_ids)
    bubbles = set(fixture.bubble_ids)
    for _, fields in scan_stream(r):
        key = trace_key(fields)
        if key is None:
            continue
        kind, ident, _ = key
        (gens if kind == "generation" else bubbles).discard(ident)
    return {"generations": len(gens), "bubbles": len(bubbles)}


def raw_xadd(r: redis.Redis, limit: int = 20_000, repeats: int = 3) -> dict[str, Any]:
    """The same trace entries re-added by a plain pipelined redis-py XADD loop (best of
    ``repeats``: the machine is shared, the best run is the loop's own speed)."""
    entries = [f for _, f in scan_stream(r) if f.get(b"event_type") == b"database_trace"][:limit]
    if not entries:
        return {"entries": 0, "per_s": None}
    runs: list[int] = []
    for _ in range(repeats):
        r.delete(RAW_STREAM)
        started = time.perf_counter()
        for i in range(0, len(entries), 500):
            pipe = r.pipeline(transaction=False)
            for f in entries[i : i + 500]:
                pipe.xadd(RAW_STREAM, f)
            pipe.execute()
        runs.append(round(len(entries) / (time.perf_counter() - started)))
        r.delete(RAW_STREAM)
    avg = sum(len(k) + len(v) for f in entries for k, v in f.items()) / len(entries)
    size = round(avg)
    return {"entries": len(entries), "avg_entry_bytes": size, "per_s": max(runs), "runs": runs}


class StreamWatcher(threading.Thread):
    """Tails the stream and notes when each generation / settled bubble first appears."""

    def __init__(self, url: str, start_id: str) -> None:
        super().__init__(name="stream-watcher", daemon=True)
        self.r = redis.Redis.from_url(url, socket_timeout=10)
        self.last = start_id
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                resp = self.r.xread({STREAM: self.last}, count=1000, block=200)
                for _, entries in resp or []:
                    for eid, fields in entries:
                        self.last = _text(eid)
                        key = trace_key(fields)
                        if key is None or not key[2]:
                            continue
                        with self.lock:
                            self.seen.setdefault(key[1], entry_ms(eid))
        except redis.RedisError as exc:
            self.error = exc
        finally:
            self.r.close()

    def get(self, ident: str) -> int | None:
        with self.lock:
            return self.seen.get(ident)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def latency(
    url: str, r: redis.Redis, fixture: Fixture, setup: Setup, timeout_s: float
) -> dict[str, Any]:
    """Commit → XADD for workspace generations and for streamed global-database bubbles."""
    info = r.xinfo_stream(STREAM)
    watcher = StreamWatcher(url, _text(info["last-generated-id"]))
    watcher.start()
    rng = random.Random(8)
    commits: dict[str, dict[str, int]] = {"generation": {}, "bubble": {}}
    try:
        for i in range(setup.samples):
            ws = rng.choice(fixture.workspaces)
            g = make_generation(now_ms(), "composer", f"live sample {i}")
            ws.db.append_generations([g])
            commits["generation"][g["generationUUID"]] = now_ms()  # right after COMMIT
            time.sleep(rng.uniform(0.3, 0.5))
        for i in range(setup.samples):
            ws = rng.choice(fixture.workspaces)
            final: dict[str, int] = {}

            def on_write(step: int, bubble: dict[str, Any], _f: dict[str, int] = final) -> None:
                _f["ms"] = now_ms()  # the last call is the final commit

            bubble = fixture.global_db.stream_assistant_bubble(
                rng.choice(ws.composers),
                f"A streamed answer, sample {i}. " * 20,
                steps=5,
                delay_s=0.04,
                on_write=on_write,
            )
            commits["bubble"][bubble["bubbleId"]] = final["ms"]
            time.sleep(rng.uniform(0.3, 0.5))
        # Wait for the stragglers, each up to its own timeout.
        last_commit = max(max(c.values()) for c in commits.values())
        while now_ms() < last_commit + timeout_s * 1000:
            if all(watcher.get(k) is not None for c in commits.values() for k in c):
                break
            time.sleep(0.1)
    finally:
        watcher.stop()
    if watcher.error is not None:
        raise RuntimeError(f"stream watcher failed: {watcher.error}")
    out: dict[str, Any] = {"timeout_s": timeout_s}
    for kind, c in commits.items():
        lat: list[float] = []
        misses = 0
        for ident, commit_ms in c.items():
            seen = watcher.get(ident)
            if seen is None or seen - commit_ms > timeout_s * 1000:
                misses += 1
                lat.append(float("inf"))
            else:
                lat.append(float(seen - commit_ms))
        found = [x for x in lat if x != float("inf")]
        out[kind] = {
            "samples": len(lat),
            "misses": misses,
            "p50_ms": _finite(percentile(lat, 50)),
            "p99_ms": _finite(percentile(lat, 99)),
            "max_found_ms": max(found) if found else None,
            "min_found_ms": min(found) if found else None,
            "slowest_ms": sorted(found)[-3:],
        }
    return out


def _finite(x: float | None) -> float | None:
    """A percentile that falls on a miss is reported as None (shown as "miss")."""
    return None if x is None or x == float("inf") else x


def wait_quiet(r: redis.Redis, quiet_s: float, limit_s: float) -> float:
    """Wait until the stream has not grown for ``quiet_s``; returns the seconds waited."""
    started = time.monotonic()
    last, since = entries_added(r), time.monotonic()
    while time.monotonic() - started < limit_s:
        time.sleep(0.5)
        now = entries_added(r)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return round(time.monotonic() - started, 1)


def idle_cpu(server: ServerProcess, r: redis.Redis, window_s: float) -> dict[str, Any]:
    """CPU of the server process over ``window_s`` with nothing written anywhere."""
    before_entries = entries_added(r)
    t0, c0 = time.monotonic(), _proc_cpu_ticks(server.pid)
    time.sleep(window_s)
    t1, c1 = time.monotonic(), _proc_cpu_ticks(server.pid)
    cpu_s = (c1 - c0) / CLK_TCK
    return {
        "window_s": round(t1 - t0, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_pct_of_one_core": round(100 * cpu_s / (t1 - t0), 3),
        "entries_added_meanwhile": entries_added(r) - before_entries,
    }


def consumer_backlog(
    server: ServerProcess, r: redis.Redis, store: StoreReader, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Stop the server, drop the store, rewind the consumer group, restart: events stored/s."""
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    r.xgroup_setid(STREAM, GROUP, "0")
    backlog = int(r.xlen(STREAM))
    server.start()
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = store.count()
        if n != last:
            last, since = n, time.monotonic()
        if n >= backlog or (n and time.monotonic() - since > 10):
            break
        time.sleep(0.05)
    rows, first_rx, last_rx = store.span()
    span_s = (last_rx - first_rx) / 1000
    return {
        "backlog_entries": backlog,
        "stored_rows": rows,
        "span_s": round(span_s, 3),
        "stored_per_s": round(rows / span_s) if span_s > 0 else None,
    }


# --------------------------------------------------------------------------- one configuration


def run_config(
    name: str,
    setup: Setup,
    cached: Path,
    only: str | None = None,
    binary: Path = BLUEPLANE,
    profile: Path | None = None,
    extra_env: dict[str, str] | None = None,
    profile_format: str = "speedscope",
) -> dict[str, Any]:
    """Set up, run the server, measure every phase, stop and clean up everything."""
    root = Path(tempfile.mkdtemp(prefix=f"blueplane-live-{name}-", dir="/tmp"))
    system_redis = shutil.which("redis-server")  # 7.x: XINFO STREAM has entries-added
    redis_server = BundledRedis(root / "redis", binary=Path(system_redis) if system_redis else None)
    server: ServerProcess | None = None
    fixture: Fixture | None = None
    r: redis.Redis | None = None
    result: dict[str, Any] = {"config": name, "env": CONFIGS[name], "load_avg": os.getloadavg()}
    try:
        t = time.monotonic()
        fixture = make_fixture(setup, root, cached)
        result["setup"] = {
            "workspaces": len(fixture.workspaces),
            "generations": len(fixture.generation_ids),
            "global_db_bytes": fixture.global_bytes,
            "old_bubbles": fixture.old_bubbles,
            "recent_bubbles": len(fixture.bubble_ids),
            "seconds": round(time.monotonic() - t, 1),
        }
        log(f"{name}: fixture ready in {result['setup']['seconds']} s: {result['setup']}")
        url = redis_server.start()
        r = redis.Redis.from_url(url, socket_timeout=30)
        home = root / "home"
        env = server_env(home, url, fixture, {**CONFIGS[name], **(extra_env or {})})
        if extra_env:
            result["extra_env"] = extra_env
        server = ServerProcess(root, env, binary)
        server.start()
        store = StoreReader(home / "telemetry.db")
        poll_s = SAFETY_POLL_S[name]
        log(f"{name}: server pid {server.pid} running; first sync")
        result["first_sync"] = first_sync(
            r, store, fixture, setup, poll_s, server.pid, profile, profile_format
        )
        log(f"{name}: first sync {_brief(result['first_sync'])}")
        result["raw_xadd"] = raw_xadd(r)
        pub = result["first_sync"]["published_per_s"]
        raw = result["raw_xadd"]["per_s"]
        result["sync_ratio_pct"] = round(100 * pub / raw, 1) if pub and raw else None
        busy = result["first_sync"]["busy_published_per_s"]
        result["busy_sync_ratio_pct"] = round(100 * busy / raw, 1) if busy and raw else None
        if only == "first-sync":
            result["memory_mb"] = _proc_mem_mb(server.pid)
            log(f"{name}: raw XADD {result['raw_xadd']}; memory {result['memory_mb']}")
            return result
        log(f"{name}: raw XADD {result['raw_xadd']}; latency ({setup.samples} samples each)")
        result["latency"] = latency(url, r, fixture, setup, timeout_s=max(5.0, poll_s + 5.0))
        log(f"{name}: latency {result['latency']}")
        status = json.loads((home / "status.json").read_text(encoding="utf-8"))
        result["monitor_counters"] = status["components"]["database_monitor"]["counters"]
        log(f"{name}: database monitor counters {result['monitor_counters']}")
        result["settle_wait_s"] = wait_quiet(r, quiet_s=max(5.0, poll_s + 2.0), limit_s=120.0)
        log(f"{name}: idle window {setup.idle_s} s")
        result["idle"] = idle_cpu(server, r, setup.idle_s)
        result["memory_mb"] = _proc_mem_mb(server.pid)
        log(f"{name}: idle {result['idle']}; memory {result['memory_mb']}")
        result["server_alive"] = server.alive()
        result["consumer_backlog"] = consumer_backlog(server, r, store)
        log(f"{name}: consumer backlog {result['consumer_backlog']}")
        errors = [ln for ln in server.tail(400).splitlines() if " ERROR " in ln]
        result["server_error_lines"] = errors[-10:]
    except BaseException:
        if server is not None:
            log(f"{name}: server log tail:\n{server.tail(30)}")
        raise
    finally:
        if server is not None:
            server.stop()
        if r is not None:
            r.close()
        redis_server.stop()
        if fixture is not None:
            fixture.close()
        shutil.rmtree(root, ignore_errors=True)
    return result


def _brief(fs: dict[str, Any]) -> str:
    keep = ("complete", "missing", "traces_published", "publish_span_s", "published_per_s")
    return json.dumps({k: fs[k] for k in keep})


# --------------------------------------------------------------------------- the table


def _fmt(x: Any, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "miss" if unit == " ms" else "n/a"
    if x == "n/a":
        return x
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}{unit}"
    return f"{x:,.0f}{unit}" if isinstance(x, int | float) else f"{x}{unit}"


def table(results: list[dict[str, Any]]) -> str:
    """One row per configuration, the targets in the last row."""
    cols = [
        ("configuration", 30),
        ("first sync /s (busy)", 20),
        ("raw XADD /s", 12),
        ("ratio (busy)", 15),
        ("store /s", 11),
        ("gen p50", 9),
        ("gen p99", 9),
        ("bubble p50", 10),
        ("bubble p99", 10),
        ("idle CPU", 9),
        ("RSS / peak MB", 14),
    ]
    lines = [" | ".join(name.ljust(w) for name, w in cols)]
    lines.append("-+-".join("-" * w for _, w in cols))
    labels = {
        "default": "default (events, 30 s poll)",
        "comparison": "events off, 1 s poll",
    }
    for res in results:
        fs, lat = res.get("first_sync", {}), res.get("latency", {})
        g, b = lat.get("generation", {}), lat.get("bubble", {})
        if not lat:  # not measured (--only first-sync): no sample, so no miss either
            g = b = {"p50_ms": "n/a", "p99_ms": "n/a"}
        mem = res.get("memory_mb", {})
        ratio = res.get("sync_ratio_pct")
        gmiss = f" ({g.get('misses')} miss)" if g.get("misses") else ""
        bmiss = f" ({b.get('misses')} miss)" if b.get("misses") else ""
        row = [
            labels.get(res["config"], res["config"]) + ("" if fs.get("complete") else " *"),
            f"{_fmt(fs.get('published_per_s'))} ({_fmt(fs.get('busy_published_per_s'))})",
            _fmt(res.get("raw_xadd", {}).get("per_s")),
            f"{_fmt(ratio, ' %', 1)} ({_fmt(res.get('busy_sync_ratio_pct'), ' %', 1)})",
            _fmt(res.get("consumer_backlog", {}).get("stored_per_s")),
            _fmt(g.get("p50_ms"), " ms"),
            _fmt(g.get("p99_ms"), " ms") + gmiss,
            _fmt(b.get("p50_ms"), " ms"),
            _fmt(b.get("p99_ms"), " ms") + bmiss,
            _fmt(res.get("idle", {}).get("cpu_pct_of_one_core"), " %", 2),
            f"{_fmt(mem.get('VmRSS'))} / {_fmt(mem.get('VmHWM'))}",
        ]
        lines.append(" | ".join(v.ljust(w) for v, (_, w) in zip(row, cols, strict=True)))
    t = TARGETS
    target_row = [
        "target",
        "",
        "",
        t["sync_ratio_pct"],
        t["store_per_s"],
        t["p50_ms"],
        t["p99_ms"],
        t["p50_ms"],
        t["p99_ms"],
        t["idle_cpu_pct"],
        t["rss_mb"],
    ]
    lines.append(" | ".join(v.ljust(w) for v, (_, w) in zip(target_row, cols, strict=True)))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "load_avg_at_start": os.getloadavg(),
    }


def _shown(path: str) -> str:
    """``path`` relative to the repository when inside it (``.venv/bin/python``)."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 workspaces, 50 MB, 20 samples")
    ap.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        action="append",
        help="run only this configuration (repeatable; default: all)",
    )
    ap.add_argument(
        "--only",
        choices=["first-sync"],
        help="measure only the first sync and raw XADD (no latency, idle or backlog phase)",
    )
    ap.add_argument(
        "--blueplane",
        type=Path,
        default=BLUEPLANE,
        help="the server executable (e.g. another checkout's .venv/bin/blueplane for an A/B)",
    )
    ap.add_argument("--profile", type=Path, help="py-spy the first sync into this file")
    ap.add_argument(
        "--profile-format",
        choices=["speedscope", "chrometrace"],
        default="speedscope",
        help="py-spy's output format (chrometrace: every thread, waiting too, with times)",
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra environment variable of the server (repeatable), e.g. a setting",
    )
    ap.add_argument("--output", type=Path, help="results file (default: bench/results/...)")
    args = ap.parse_args(argv)
    setup = QUICK if args.quick else FULL
    names = args.config or list(CONFIGS)

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so every finally stops what it started

    signal.signal(signal.SIGTERM, _term)
    info = machine()
    t = time.monotonic()
    cached = cached_global_db(setup)
    size = cached.stat().st_size
    log(f"global database {cached} ({size:,} bytes) ready in {time.monotonic() - t:.1f} s")
    extra = dict(kv.split("=", 1) for kv in args.server_env)
    results = [
        run_config(
            name, setup, cached, args.only, args.blueplane, args.profile, extra, args.profile_format
        )
        for name in names
    ]
    info["load_avg_at_end"] = os.getloadavg()
    report = {
        "setup": asdict(setup),
        "targets": TARGETS,
        "machine": info,
        "note": "shared machine: other engineers' test runs may have competed for the 2 cores",
        "command": " ".join([_shown(sys.executable), *sys.argv]),
        "server": _shown(str(args.blueplane)),
        "results": results,
    }
    out = args.output or RESULTS / ("live-quick.json" if args.quick else "live.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    if any(not res.get("first_sync", {}).get("complete") for res in results):
        print("* first sync incomplete: see first_sync.missing in the JSON")
    print(
        "first sync /s: traces / (last - first trace's stream time); (busy): pauses over "
        f"{BUSY_GAP_S} s left out. store /s: backlog replay. Misses: not on the stream "
        "within the sample timeout (safety poll + 5 s)."
    )
    print(f"written {_shown(str(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
