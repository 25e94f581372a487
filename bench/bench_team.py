"""Benchmark: team scale — 50 producers, one Redis, 3 ``blueplane consume``, PostgreSQL (issue 13).

Everything is the real command in its own process, on loopback:

- **50 producers**: each a real ``blueplane run`` (``fast_path.enabled: false``,
  ``session_monitor.read_stream: false``: sessions from session files) against its own fake
  Cursor ``User`` folder (tests/fixtures/cursor_db.py, as bench_live.py): 2 workspaces with a
  full generations ring and prompts, and a global database with composers and bubbles
  attributed to them — a realistic mix of generations, prompts and chat bubbles;
- **one Redis** (a private ``redis-server``, append-only file);
- **3 ``blueplane consume``** in one group;
- **the machine's PostgreSQL** (127.0.0.1:5432), a database of the bench's own, dropped at the end.

Phases:

1. **initial sync**: the 50 producers start together and publish their folders; events/s into
   PostgreSQL and the group's lag (XINFO GROUPS) during the burst;
2. **steady 5,000 events/s**: writer processes append generations to the producers' databases
   (Cursor's VS Code-style flush) at 5,000/s in total for ``--steady-s``; end-to-end lag =
   ``received_at_ms`` in PostgreSQL − the generation's own ``unixMs`` (set when written), p50/p99;
3. **faults mid-burst** at ``--burst-rate``: SIGKILL one consumer (restarted 5 s later), then
   restart PostgreSQL (``pg_ctlcluster --skip-systemctl-redirect 15 main restart``);
4. **backlog drain**: consumers stopped, the store emptied, the group rewound to ``0``, the 3
   consumers restarted: the whole stream into PostgreSQL — sustained events/s of the consumers;
   then the same with one consumer, for comparison.

A generation the writers wrote but no producer published was pushed out of Cursor's capped
ring (100) before its producer read it (producers starved of CPU): that is counted apart
(``generations_lost``) from the pipeline's own count (stream → PostgreSQL).

Correctness, counted against the producers' own record: every ``database_trace`` the producers
put on the stream, and every generation the writers wrote, is in PostgreSQL exactly once
(after phases 1-3, and again after the drain).

    .venv/bin/python bench/bench_team.py            # ~6-8 min
    .venv/bin/python bench/bench_team.py --quick    # 10 producers, short phases
    .venv/bin/python bench/bench_team.py --drain-only [--blueplane PATH]   # ~1.5 min

``--drain-only`` measures the consumers and PostgreSQL alone (the 50 producers take a core of
the 2 while they run): the producers' initial sync, 3 times the size of phase 1's (210 k
entries: generations, prompts, chat bubbles), is published once and cached as a Redis ``DUMP``
(``--stream-cache``); each run restores it and drains it with 3, then 1 ``consume``
(``--drains``) into an emptied store: events/s and CPU µs per event of the consumers and of
their PostgreSQL backends, and the exact count. Writes ``bench/results/team-drain.json``.

Writes ``bench/results/team.json`` (``team-quick.json``) and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.fixtures.cursor_db import (  # noqa: E402
    GENERATIONS_KEY,
    PROMPTS_KEY,
    CursorDb,
    make_assistant_bubble,
    make_generation,
    make_prompt,
    make_user_bubble,
    make_user_dir,
    make_workspace_identifier,
    now_ms,
)

from blueplane.broker import BundledRedis  # noqa: E402
from blueplane.events import normalise_workspace_path, workspace_hash  # noqa: E402
from cursor_writer import percentile  # noqa: E402

BLUEPLANE = ROOT / ".venv" / "bin" / "blueplane"  # --blueplane PATH: another build's (A/B)
PG_SERVER = os.environ.get("BLUEPLANE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PG_RESTART = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]
STREAM = "telemetry:events"
GROUP = "blueplane-fast-path"


@dataclass(frozen=True)
class Setup:
    producers: int
    workspaces: int  # per producer
    ring: int  # generations per workspace at start (Cursor caps the ring at 100)
    prompts: int  # per workspace at start
    composers: int  # per producer, in its global database
    bubbles: int  # per composer
    steady_rate: int  # events/s in phase 2
    steady_s: float
    burst_rate: int  # events/s asked of the writers in phase 3
    burst_s: float


FULL = Setup(50, 2, 100, 100, 10, 100, 5000, 40.0, 12000, 25.0)
QUICK = Setup(10, 2, 50, 50, 4, 50, 1000, 10.0, 3000, 10.0)
# --drain-only: the producers' initial sync, 3 times FULL's (the same mix of generations,
# prompts and bubbles: 50 × (6 × 200 + 30 × 100) = 210 k entries), published once and cached.
DRAIN = Setup(50, 6, 100, 100, 30, 100, 0, 0.0, 0, 0.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes
class Proc:
    """A ``blueplane`` command in its own process group, output to a log file."""

    binary: ClassVar[Path] = BLUEPLANE

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), *self.args], env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True,
                cwd=self.env["BLUEPLANE_HOME"],
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _state(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["server"]["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for(pred: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


# --------------------------------------------------------------------------- fixtures
@dataclass
class Producer:
    index: int
    home: Path
    user: Path
    dbs: list[Path] = field(default_factory=list)  # its workspaces' state.vscdb
    proc: Proc | None = None


def make_producer(root: Path, i: int, s: Setup) -> Producer:
    base = root / f"p{i:02d}"
    home = base / "home"
    (home / "cursor-session").mkdir(parents=True)
    user = make_user_dir(base)
    p = Producer(i, home, user.path)
    t = now_ms() - 3_600_000
    gdb = CursorDb(user.global_storage / "state.vscdb", "wal", tables=("ItemTable", "cursorDiskKV"))
    for w in range(s.workspaces):
        folder = base / "projects" / f"ws{w}"
        folder.mkdir(parents=True)
        ws = user.add_workspace(str(folder), with_db=False)
        ring = [make_generation(t + k, "composer", f"p{i} ws{w} gen {k} " + "x" * 200)
                for k in range(s.ring)]  # fmt: skip
        prompts = [make_prompt(f"p{i} ws{w} prompt {k} " + "y" * 200) for k in range(s.prompts)]
        ws.db.write_batch({GENERATIONS_KEY: ring, PROMPTS_KEY: prompts})
        p.dbs.append(ws.db.path)
        path = normalise_workspace_path(str(folder))
        (home / "cursor-session" / f"{workspace_hash(path)}.json").write_text(
            json.dumps({"session_id": f"bench-{i}-{w}", "workspace_path": path})
        )
        if w == 0:
            for c in range(s.composers):
                bubbles = [
                    make_user_bubble(f"p{i} c{c} q{k} " + "z" * 150)
                    if k % 2 == 0
                    else make_assistant_bubble(f"p{i} c{c} a{k} " + "w" * 400)
                    for k in range(s.bubbles)
                ]
                gdb.put_conversation(
                    bubbles,
                    workspaceIdentifier=make_workspace_identifier(ws.id, str(folder)),
                )
    return p


def producer_env(p: Producer, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(p.home),
        BLUEPLANE_REDIS_URL=redis_url,
        BLUEPLANE_CURSOR_DIRS=str(p.user),
        BLUEPLANE_FAST_PATH__ENABLED="false",
        BLUEPLANE_FAST_PATH__MAX_STREAM_LENGTH="5000000",
        BLUEPLANE_SESSION_MONITOR__READ_STREAM="false",
        BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="1",
        BLUEPLANE_LOG_LEVEL="WARNING",
    )
    return env


def consumer_env(root: Path, name: str, redis_url: str, pg_url: str) -> dict[str, str]:
    home = root / "central"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(home),
        BLUEPLANE_REDIS_URL=redis_url,
        BLUEPLANE_STORE_URL=pg_url,
        BLUEPLANE_FAST_PATH__CONSUMER=name,
        BLUEPLANE_FAST_PATH__CLAIM_IDLE_MS="5000",
        BLUEPLANE_FAST_PATH__MAX_STREAM_LENGTH="5000000",  # keep all: phase 4 re-reads it
        BLUEPLANE_FAST_PATH__STORE_RETRY_MAX_SECONDS="2",
    )
    return env


# --------------------------------------------------------------------------- writers
def _writer(dbs: list[str], per_tick: int, tick_s: float, until: float, ids_path: str) -> None:
    """Append ``per_tick`` generations to each of ``dbs`` every ``tick_s`` until ``until`` (one
    VS Code-style flush of the whole capped ring, as Cursor writes it; the ring is kept in
    memory, as Cursor does); every committed generationUUID goes to ``ids_path``."""
    handles = [CursorDb(Path(d), "delete") for d in dbs]
    rings = [db.generations() for db in handles]
    n = 0
    with open(ids_path, "a", encoding="utf-8") as ids:
        next_at = time.time()
        while time.time() < until:
            for k, db in enumerate(handles):
                base = now_ms()
                new = [make_generation(base + j, "composer", f"live {n + j} " + "x" * 120)
                       for j in range(per_tick)]  # fmt: skip
                rings[k] = (rings[k] + new)[-100:]
                db.write_batch({GENERATIONS_KEY: rings[k]})
                ids.write("".join(g["generationUUID"] + "\n" for g in new))
                n += per_tick
            ids.flush()
            next_at += tick_s
            time.sleep(max(0.0, next_at - time.time()))
    # its own CPU, for the bench's per-process accounting (the load generator's share)
    Path(f"{ids_path}-cpu").write_text(str(time.process_time()))


def run_writers(producers: list[Producer], rate: int, seconds: float, ids_path: Path,
                procs: int = 4) -> tuple[float, float, list[mp.Process]]:  # fmt: skip
    """Writers for ``seconds`` at ``rate`` generations/s in total, spread over every workspace;
    returns (start, end) wall times."""
    dbs = [str(d) for p in producers for d in p.dbs]
    tick_s = 0.25
    per_tick = max(1, round(rate * tick_s / len(dbs)))
    start = time.time()
    until = start + seconds
    chunks = [dbs[k::procs] for k in range(procs)]
    workers = [
        mp.Process(target=_writer, args=(c, per_tick, tick_s, until, f"{ids_path}.{k}"))
        for k, c in enumerate(chunks)
    ]
    for w in workers:
        w.start()
    return start, until, workers


def writers_cpu_s(ids_path: Path) -> float:
    """CPU seconds of the writer processes that last ran (each wrote its own at its end)."""
    total = 0.0
    for f in ids_path.parent.glob(ids_path.name + ".*-cpu"):
        total += float(f.read_text())
        f.unlink()
    return total


def read_ids(ids_path: Path) -> list[str]:
    out: list[str] = []
    for f in sorted(ids_path.parent.glob(ids_path.name + ".*")):
        if f.name.endswith("-cpu"):
            continue
        out += [line for line in f.read_text().splitlines() if line]
    return out


# --------------------------------------------------------------------------- measuring
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine (every core, everyone's work)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / _TICK  # minus idle and iowait


def _postgres_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    out.append(int(d.name))
            except OSError:
                continue
    return out


class CpuMeter:
    """CPU seconds per group of processes over a phase, from /proc: who eats the 2 cores.

    ``postgres_ours`` are the backends connected to the bench's database (the consumers'
    writers, the bench's polls); ``postgres_rest`` every other PostgreSQL process (WAL writer,
    checkpointer, and other engineers' backends on this shared server). A process that exits
    within the phase (a killed consumer) is not counted, one started within it counts from its
    start; ``machine`` is every core's busy
    time, so ``machine`` minus the groups is everything else on the machine."""

    def __init__(self, groups: Any, pg_url: str, db_name: str) -> None:
        self.groups, self.pg_url, self.db_name = groups, pg_url, db_name

    def snapshot(self) -> dict[str, Any]:
        groups: dict[str, list[int]] = {k: [p for p in v if p] for k, v in self.groups().items()}
        ours: list[int] = []
        try:
            with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=3) as c:
                ours = [r[0] for r in c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid()", (self.db_name,))]  # fmt: skip
        except psycopg.Error:
            pass
        groups["postgres_ours"] = ours
        groups["postgres_rest"] = [p for p in _postgres_pids() if p not in set(ours)]
        return {
            "t": time.time(), "machine": _machine_busy_s(),
            "pids": {k: {p: _proc_cpu_s(p) for p in v} for k, v in groups.items()},
        }  # fmt: skip

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any], events: int | None = None,
              extra: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
        """Per group: CPU seconds, share of one core, and µs per stored event."""
        wall = max(1e-6, b["t"] - a["t"])
        out: dict[str, Any] = {"wall_s": round(wall, 1)}
        groups: dict[str, float] = {}
        for k, pids in b["pids"].items():
            before = a["pids"].get(k, {})
            # a process started within the phase counts from its start
            groups[k] = sum(c - (before.get(p) or 0.0) for p, c in pids.items() if c is not None)
        groups.update(extra or {})
        groups["machine"] = b["machine"] - a["machine"]
        groups["everything_else"] = groups["machine"] - sum(
            v for k, v in groups.items() if k != "machine")  # fmt: skip
        for k, v in groups.items():
            row: dict[str, Any] = {"cpu_s": round(v, 2), "cores": round(v / wall, 2)}
            if events:
                row["us_per_event"] = round(v / events * 1e6, 1)
            out[k] = row
        return out


class LagSampler(threading.Thread):
    """The group's lag and pending count every 0.25 s (XINFO GROUPS)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url, socket_timeout=10)
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                for g in self.r.xinfo_groups(STREAM):
                    if g["name"] == GROUP.encode():
                        self.samples.append((time.time(), int(g.get("lag") or 0),
                                             int(g["pending"])))  # fmt: skip
            except redis.RedisError:
                pass
            self._halt.wait(0.25)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        lags = [lag for t, lag, _ in self.samples if t0 <= t <= t1]
        pend = [p for t, _, p in self.samples if t0 <= t <= t1]
        return {
            "max_lag": max(lags, default=None),
            "p50_lag": percentile(lags, 50),
            "max_pending": max(pend, default=None),
        }

    def stop(self) -> None:
        self._halt.set()


def pg_one(url: str, sql: str, args: tuple[Any, ...] = ()) -> Any:
    for attempt in range(60):
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=3) as c:
                return c.execute(sql, args).fetchone()  # type: ignore[arg-type]
        except psycopg.OperationalError:
            if attempt == 59:
                raise
            time.sleep(0.5)
    return None


def stream_trace_ids(r: redis.Redis) -> set[str]:
    ids: set[str] = set()
    last = "-"
    while True:
        batch = r.xrange(STREAM, min=last, max="+", count=10000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return ids
        for _id, f in batch:
            if f.get(b"event_type") == b"database_trace":
                ids.add(f[b"event_id"].decode())
        last = batch[-1][0]


def check_exact(pg_url: str, r: redis.Redis, written: list[str]) -> dict[str, Any]:
    """0 lost / 0 duplicated: the stream's traces and the writers' generations in PostgreSQL."""
    on_stream = stream_trace_ids(r)
    with psycopg.connect(pg_url) as c:
        stored = {row[0] for row in c.execute(
            "SELECT event_id FROM events WHERE event_type='database_trace'")}  # fmt: skip
        total = c.execute("SELECT count(*) FROM events WHERE event_type='database_trace'"
                          ).fetchone()[0]  # type: ignore[index]  # fmt: skip
        gens = c.execute(
            "SELECT generation_id, count(*) FROM events WHERE trace_type='generation'"
            " GROUP BY generation_id"
        ).fetchall()
    per_gen = dict(gens)
    return {
        "stream_traces": len(on_stream),
        "stored_traces": total,
        "lost_from_stream": len(on_stream - stored),
        "stored_not_on_stream": len(stored - on_stream),
        "duplicated_rows": total - len(stored),
        "generations_written": len(written),
        "generations_lost": sum(1 for g in written if g not in per_gen),
        "generations_duplicated": sum(1 for g in written if per_gen.get(g, 0) > 1),
    }


def wait_drained(pg_url: str, r: redis.Redis, timeout: float) -> float:
    """Until every trace on the stream is in PostgreSQL and nothing is pending; returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = next((g for g in r.xinfo_groups(STREAM) if g["name"] == GROUP.encode()), None)
        if g and int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0:
            return time.time()
        time.sleep(0.25)
    raise RuntimeError("consumers did not drain the stream")


def stored_count(pg_url: str) -> int:
    """Events stored so far: the writers' own counter (``store_meta.events_stored``, one row),
    not ``count(*)``, which on 400 k rows cost PostgreSQL ~0.1 s of CPU per poll, taken
    from the consumers being measured."""
    row = pg_one(pg_url, "SELECT value FROM store_meta WHERE key = 'events_stored'")
    return int(row[0]) if row else 0


def empty_store(pg_url: str) -> None:
    """Every table of the store emptied (events, sources, conversations, search, activity)
    and its stored-events counter reset: the drain writes into a store as a first start
    would, not one whose side tables already hold every row."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        tables = [t for (t,) in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'store_meta'")]  # fmt: skip
        c.execute(f"TRUNCATE {', '.join(tables)}")  # type: ignore[arg-type]
        c.execute("DELETE FROM store_meta WHERE key = 'events_stored'")


# --------------------------------------------------------------------------- phases
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pg-restart", action="store_true",
                    help="skip restarting the machine's PostgreSQL")  # fmt: skip
    ap.add_argument("--blueplane", type=Path, default=BLUEPLANE,
                    help="the blueplane command to run (another build's, for an A/B)")  # fmt: skip
    ap.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile each consumer during the 3-consumer drain (py-spy, into DIR)",
    )
    ap.add_argument(
        "--drain-only",
        action="store_true",
        help="the consumers' capacity alone: a stream of producer-shaped entries (the producers'"
        " initial sync, cached in --stream-cache) drained into PostgreSQL by --drains consumers,"
        " with no producer running",
    )
    ap.add_argument("--drains", default="3,1",
                    help="--drain-only: the consumer counts of the drains, in order")  # fmt: skip
    ap.add_argument("--stream-cache", type=Path, default=Path("/tmp/bp-bench-team-stream.dump"),
                    help="--drain-only: the stream (Redis DUMP), made once")  # fmt: skip
    ap.add_argument(
        "--output",
        type=Path,
        default=None,
        help="default: bench/results/team.json (team-quick.json with --quick)",
    )
    opts = ap.parse_args(argv)
    Proc.binary = opts.blueplane.resolve() if opts.blueplane.exists() else opts.blueplane
    if opts.drain_only:
        return drain_only(opts)
    s = QUICK if opts.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="bp-bench-team-"))
    result: dict[str, Any] = {
        "blueplane": str(Proc.binary),
        "setup": s.__dict__,
        "machine": machine(),
        "started_at": time.strftime("%FT%TZ", time.gmtime()),
    }
    db_name, pg_url, rs, redis_url, r = set_up(root)
    producers: list[Producer] = []
    consumers: dict[str, Proc] = {}
    sampler = LagSampler(redis_url)
    writers: list[mp.Process] = []
    ids_path = root / "written"
    try:
        meter = CpuMeter(lambda: {
            "producers": [p.proc.pid for p in producers if p.proc is not None],
            "consumers": [c.pid for c in consumers.values()],
            "redis": [rs.process.pid] if rs.process is not None else [],
            "bench": [os.getpid()],
        }, f"{PG_SERVER}/postgres", db_name)  # fmt: skip
        log(f"building {s.producers} fake Cursor folders under {root}")
        producers = [make_producer(root, i, s) for i in range(s.producers)]

        def start_consumer(name: str) -> Proc:
            proc = Proc(["consume"], consumer_env(root, name, redis_url, pg_url),
                        root / f"consume-{name}.log").start()  # fmt: skip
            consumers[name] = proc
            return proc

        for k in range(3):
            start_consumer(f"central-{k + 1}")
        central = root / "central"
        wait_for(lambda: all(_state(central / f"consume-{n}.json") == "running"
                             for n in consumers), "3 consumers running", 60)  # fmt: skip
        sampler.start()

        # ---- phase 1: initial sync of 50 producers at once
        log(f"phase 1: starting {s.producers} producers (blueplane run)")
        t_start = time.time()
        cpu0 = meter.snapshot()
        for p in producers:
            p.proc = Proc(["run"], producer_env(p, redis_url), p.home / "run.log").start()
        wait_for(lambda: all(_state(p.home / "status.json") == "running" for p in producers),
                 "all producers running", 300)  # fmt: skip
        t_running = time.time()
        expected_min = s.producers * (s.workspaces * (s.ring + s.prompts) + s.composers * s.bubbles)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 5:
            n = stored_count(pg_url)
            if n != last:
                last, stable_since = n, time.monotonic()
            time.sleep(0.5)
        wait_drained(pg_url, r, 120)
        first, last_ms, rows = pg_one(pg_url, "SELECT min(received_at_ms), max(received_at_ms),"
                                      " count(*) FROM events")  # fmt: skip
        span_s = max(0.001, (last_ms - first) / 1000)
        result["initial_sync"] = {
            "producers_start_s": round(t_running - t_start, 1),
            "events_stored": rows,
            "events_expected_at_least": expected_min,
            "span_s": round(span_s, 2),
            "events_per_s_into_pg": round(rows / span_s),
            "group": sampler.window(t_start, time.time()),
            "cpu": CpuMeter.delta(cpu0, meter.snapshot(), rows),
        }
        log(f"phase 1: {result['initial_sync']}")
        # the producers idle (nothing to read): what 50 of them cost the consumers' cores
        cpu0 = meter.snapshot()
        time.sleep(10)
        result["idle_producers_cpu"] = CpuMeter.delta(cpu0, meter.snapshot())
        log(f"idle: {result['idle_producers_cpu']}")

        # ---- phase 2: steady 5,000 events/s, end-to-end lag
        log(f"phase 2: {s.steady_rate} events/s for {s.steady_s:g} s")
        cpu0 = meter.snapshot()
        t0, t1, writers = run_writers(producers, s.steady_rate, s.steady_s, ids_path)
        for w in writers:
            w.join()
        writers_cpu = writers_cpu_s(ids_path)
        written = read_ids(ids_path)
        time.sleep(3)
        wait_drained(pg_url, r, 120)
        steady_cpu = CpuMeter.delta(cpu0, meter.snapshot(), len(written),
                                    {"load_writers": writers_cpu})  # fmt: skip
        lat = [row[0] for row in psycopg.connect(pg_url).execute(
            "SELECT received_at_ms - timestamp_ms FROM events WHERE trace_type='generation'"
            " AND timestamp_ms >= %s AND timestamp_ms <= %s", (int(t0 * 1000), int(t1 * 1000)),
        ).fetchall()]  # fmt: skip
        result["steady"] = {
            "rate_asked": s.steady_rate,
            "generations_written": len(written),
            "rate_written": round(len(written) / s.steady_s),
            "latency_samples": len(lat),
            "lag_p50_ms": percentile(lat, 50),
            "lag_p99_ms": percentile(lat, 99),
            "lag_max_ms": max(lat, default=None),
            "group": sampler.window(t0, t1),
            "cpu": steady_cpu,
        }
        log(f"phase 2: {result['steady']}")

        # ---- phase 3: faults mid-burst
        log(f"phase 3: burst at {s.burst_rate}/s for {s.burst_s:g} s with faults")
        b0, b1, writers = run_writers(producers, s.burst_rate, s.burst_s, ids_path)
        faults: list[dict[str, Any]] = []
        time.sleep(s.burst_s * 0.2)
        victim = consumers["central-2"]
        deadline = time.monotonic() + 5  # kill it mid-batch: while it holds unacked entries
        while True:
            pending = {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(STREAM, GROUP)}
            if pending.get("central-2") or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        victim.kill()
        faults.append({"at_s": round(time.time() - b0, 1), "what": "SIGKILL central-2",
                       "its_pending": pending.get("central-2")})  # fmt: skip
        log(f"phase 3: SIGKILLed central-2 holding {pending.get('central-2')} pending")
        time.sleep(s.burst_s * 0.2)
        start_consumer("central-2")
        faults.append({"at_s": round(time.time() - b0, 1), "what": "restarted central-2"})
        time.sleep(s.burst_s * 0.1)
        if not opts.no_pg_restart:
            t = time.time()
            proc = subprocess.run(PG_RESTART, capture_output=True, text=True, timeout=120)
            faults.append({"at_s": round(t - b0, 1), "what": "PostgreSQL restart",
                           "took_s": round(time.time() - t, 1), "rc": proc.returncode,
                           "stderr": proc.stderr.strip()[-300:]})  # fmt: skip
            log(f"phase 3: PostgreSQL restarted (rc {proc.returncode})")
        for w in writers:
            w.join()
        writers_cpu_s(ids_path)
        written = read_ids(ids_path)
        time.sleep(3)
        drained_at = wait_drained(pg_url, r, 300)
        result["faults"] = {
            "burst_rate_asked": s.burst_rate,
            "rate_written": round(
                (len(written) - result["steady"]["generations_written"]) / s.burst_s
            ),
            "events": faults,
            "drained_s_after_burst": round(drained_at - b1, 1),
            "group": sampler.window(b0, drained_at),
            "count": check_exact(pg_url, r, written),
        }
        log(f"phase 3: {result['faults']}")

        # ---- phase 4: backlog drain by the 3 consumers
        for proc in consumers.values():
            proc.stop()
        n_stream = int(r.xlen(STREAM))
        empty_store(pg_url)
        r.xgroup_setid(STREAM, GROUP, "0", entries_read=0)
        log(f"phase 4: draining {n_stream} entries with 3 consumers")
        d0 = time.time()
        for k in range(3):
            start_consumer(f"central-{k + 1}")
        cpu0 = meter.snapshot()
        spies = start_py_spy(opts.py_spy, consumers) if opts.py_spy else []
        wait_for(lambda: stored_count(pg_url) >= n_stream - 1000, "the drain", 600)
        d1 = wait_drained(pg_url, r, 120)
        drain_cpu = meter.snapshot()
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in spies:
            spy.wait(timeout=60)
        first, last_ms, rows = pg_one(pg_url, "SELECT min(received_at_ms), max(received_at_ms),"
                                      " count(*) FROM events")  # fmt: skip
        span_s = max(0.001, (last_ms - first) / 1000)
        result["backlog_drain"] = {
            "stream_entries": n_stream,
            "events_stored": rows,
            "span_s": round(span_s, 2),
            "events_per_s_into_pg": round(rows / span_s),
            "wall_s_including_start": round(d1 - d0, 1),
            "cpu": CpuMeter.delta(cpu0, drain_cpu, rows),
            "count": check_exact(pg_url, r, written),
        }
        log(f"phase 4: {result['backlog_drain']}")

        # ---- phase 4b: the same backlog with one consumer (for comparison)
        for proc in consumers.values():
            proc.stop()
        empty_store(pg_url)
        r.xgroup_setid(STREAM, GROUP, "0", entries_read=0)
        d0 = time.time()
        start_consumer("central-1")
        cpu0 = meter.snapshot()
        wait_for(lambda: stored_count(pg_url) >= n_stream - 1000, "the drain", 600)
        d1 = wait_drained(pg_url, r, 120)
        drain_cpu = meter.snapshot()
        first, last_ms, rows = pg_one(pg_url, "SELECT min(received_at_ms), max(received_at_ms),"
                                      " count(*) FROM events")  # fmt: skip
        span_s = max(0.001, (last_ms - first) / 1000)
        result["backlog_drain_one_consumer"] = {
            "events_stored": rows,
            "span_s": round(span_s, 2),
            "events_per_s_into_pg": round(rows / span_s),
            "wall_s_including_start": round(d1 - d0, 1),
            "cpu": CpuMeter.delta(cpu0, drain_cpu, rows),
        }
        log(f"phase 4b: {result['backlog_drain_one_consumer']}")
    finally:
        sampler.stop()
        for w in writers:
            if w.is_alive():
                w.terminate()
        for p in producers:
            if p.proc is not None:
                p.proc.stop()
        tear_down(consumers, rs, db_name, root)
    return write_result(result, opts.output or ROOT / "bench" / "results" / (
        "team-quick.json" if opts.quick else "team.json"))  # fmt: skip


def set_up(root: Path) -> tuple[str, str, BundledRedis, str, redis.Redis]:
    """A database of its own in the machine's PostgreSQL and a Redis of its own under ``root``:
    the database's name and URL, the Redis server, its URL and a client (``tear_down`` undoes)."""
    db_name = f"bp_bench_team_{os.getpid()}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db_name}"')  # type: ignore[arg-type]
    rs = BundledRedis(root / "redis", binary=Path(shutil.which("redis-server") or "redis-server"))
    redis_url = rs.start()
    return db_name, f"{PG_SERVER}/{db_name}", rs, redis_url, redis.Redis.from_url(
        redis_url, socket_timeout=30)  # fmt: skip


def tear_down(consumers: dict[str, Proc], rs: BundledRedis, db_name: str, root: Path) -> None:
    """Stop the consumers and the bench's Redis, drop its database, remove its folder."""
    for proc in consumers.values():
        proc.stop()
    rs.stop()
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')  # type: ignore[arg-type]
    except psycopg.Error as exc:
        log(f"could not drop {db_name}: {exc}")
    shutil.rmtree(root, ignore_errors=True)


def write_result(result: dict[str, Any], out: Path) -> int:
    result["load_avg_at_end"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def make_stream(root: Path, r: redis.Redis, redis_url: str, cache: Path) -> None:
    """The producers' initial sync (``DRAIN``), published with no consumer running, saved to
    ``cache`` (Redis ``DUMP`` of the stream, no group): made once, restored by later runs."""
    s = DRAIN
    log(f"building {s.producers} fake Cursor folders under {root} (once: {cache})")
    producers = [make_producer(root, i, s) for i in range(s.producers)]
    expected = s.producers * (s.workspaces * (s.ring + s.prompts) + s.composers * s.bubbles)
    try:
        for p in producers:
            p.proc = Proc(["run"], producer_env(p, redis_url), p.home / "run.log").start()
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 10 or last < expected:
            n = int(r.xlen(STREAM)) if r.exists(STREAM) else 0
            if n != last:
                last, stable_since = n, time.monotonic()
            if time.monotonic() - stable_since > 120:
                raise RuntimeError(f"the producers published {n} of {expected} entries")
            time.sleep(1)
    finally:
        for p in producers:
            if p.proc is not None:
                p.proc.stop()
    for g in r.xinfo_groups(STREAM):
        r.xgroup_destroy(STREAM, g["name"])
    dump = r.dump(STREAM)
    assert isinstance(dump, bytes)
    cache.write_bytes(dump)
    log(f"{last} entries published and saved to {cache}")


def drain_only(opts: argparse.Namespace) -> int:
    """The consumers' capacity without producers on the cores: the cached stream of producer
    entries drained into PostgreSQL by 3 (then 1, ``--drains``) ``blueplane consume``. The
    consumers start on a group set to the stream's end and are idle when the CPU meter starts
    (their start-up is not counted); the group is then rewound to ``0``. Events/s = rows over
    the span of their ``received_at_ms``; CPU per stored event of the consumers and of their
    PostgreSQL backends; every trace of the stream stored exactly once."""
    root = Path(tempfile.mkdtemp(prefix="bp-bench-team-drain-"))
    result: dict[str, Any] = {
        "blueplane": str(Proc.binary), "mode": "drain-only", "machine": machine(),
        "started_at": time.strftime("%FT%TZ", time.gmtime()), "drains": [],
    }  # fmt: skip
    db_name, pg_url, rs, redis_url, r = set_up(root)
    consumers: dict[str, Proc] = {}
    try:
        if not opts.stream_cache.exists():
            make_stream(root, r, redis_url, opts.stream_cache)
        else:
            r.restore(STREAM, 0, opts.stream_cache.read_bytes(), replace=True)
        n_stream = int(r.xlen(STREAM))
        on_stream = stream_trace_ids(r)
        result["stream_entries"] = n_stream
        meter = CpuMeter(lambda: {
            "consumers": [c.pid for c in consumers.values()],
            "redis": [rs.process.pid] if rs.process is not None else [],
            "bench": [os.getpid()],
        }, f"{PG_SERVER}/postgres", db_name)  # fmt: skip
        for n in [int(x) for x in opts.drains.split(",")]:
            for proc in consumers.values():
                proc.stop()
            consumers.clear()
            if pg_one(pg_url, "SELECT to_regclass('events')")[0] is not None:
                empty_store(pg_url)
            with contextlib.suppress(redis.ResponseError):
                r.xgroup_destroy(STREAM, GROUP)
            r.xgroup_create(STREAM, GROUP, id="$")
            for k in range(n):
                name = f"central-{k + 1}"
                env = consumer_env(root, name, redis_url, pg_url)
                env["BLUEPLANE_FAST_PATH__BLOCK_MS"] = "200"  # the rewind is seen at once
                consumers[name] = Proc(["consume"], env, root / f"consume-{name}.log").start()
            wait_for(lambda: all(_state(root / "central" / f"consume-{c}.json") == "running"
                                 for c in consumers), f"{n} consumers running", 60)  # fmt: skip
            time.sleep(1)
            cpu0 = meter.snapshot()
            spies = start_py_spy(opts.py_spy / f"drain-{n}", consumers) if opts.py_spy else []
            d0 = time.time()
            r.xgroup_setid(STREAM, GROUP, "0", entries_read=0)
            wait_for(lambda: stored_count(pg_url) >= n_stream - 1000, "the drain", 900)
            d1 = wait_drained(pg_url, r, 120)
            cpu1 = meter.snapshot()
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(timeout=60)
            first, last_ms, rows = pg_one(pg_url, "SELECT min(received_at_ms),"
                                          " max(received_at_ms), count(*) FROM events")  # fmt: skip
            span_s = max(0.001, (last_ms - first) / 1000)
            with psycopg.connect(pg_url) as c:
                stored = {row[0] for row in c.execute(
                    "SELECT event_id FROM events WHERE event_type='database_trace'")}  # fmt: skip
                traces = c.execute("SELECT count(*) FROM events WHERE"
                                   " event_type='database_trace'").fetchone()[0]  # type: ignore[index]  # fmt: skip
            cpu = CpuMeter.delta(cpu0, cpu1, rows)
            drain = {
                "consumers": n, "events_stored": rows, "span_s": round(span_s, 2),
                "events_per_s_into_pg": round(rows / span_s),
                "wall_s": round(d1 - d0, 1),
                "consumer_us_per_event": cpu["consumers"].get("us_per_event"),
                "pg_us_per_event": cpu["postgres_ours"].get("us_per_event"),
                "cpu": cpu,
                "count": {"stream_traces": len(on_stream), "stored_traces": traces,
                          "lost": len(on_stream - stored), "duplicated": traces - len(stored)},
            }  # fmt: skip
            result["drains"].append(drain)
            log(f"drain with {n}: {json.dumps({k: v for k, v in drain.items() if k != 'cpu'})}")
    finally:
        tear_down(consumers, rs, db_name, root)
    return write_result(result, opts.output or ROOT / "bench" / "results" / "team-drain.json")


def start_py_spy(out_dir: Path, consumers: dict[str, Proc]) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` of each running consumer (collapsed stacks, ``--idle`` off: CPU only),
    stopped by SIGINT when the drain ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    spies = []
    for name, c in consumers.items():
        if c.pid:
            args = [spy, "record", "--pid", str(c.pid), "--format", "raw", "--rate", "50",
                    "--threads", "--output", str(out_dir / f"consume-{name}.txt")]  # fmt: skip
            spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))  # fmt: skip
    return spies


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    pg = pg_one(f"{PG_SERVER}/postgres", "SELECT version()")
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "postgres": pg[0] if pg else None,
        "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True, check=False).stdout.strip(),
        "load_avg_at_start": os.getloadavg(),
        "shared": "2 cores shared with other engineers' work (tests, builds) during the run",
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
