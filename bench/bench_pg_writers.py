"""Store-only, concurrent: N processes each ``write_batch`` into one fresh PostgreSQL database.

What ``blueplane consume`` processes do to the shared store during a backlog drain, without
Redis or the consumers' parsing: each process writes its share of a mix (6 in 7 events are
~1.3 KB generation traces with a workspace, so each also writes a ``trace_sources`` row; 1 in 7
is a chat message of a conversation, so it reaches the search index and the conversation
indexer) in batches of ``--batch``. Events are built before the clock starts. Reports events/s
and the CPU per event of the PostgreSQL backends (from /proc, read before they close) and of the
writing processes. ``--profile``: the time spent in each statement (and COPY, COMMIT), summed
over the processes (waiting for the write lock included).

    .venv/bin/python bench/bench_pg_writers.py --procs 3 --batch 5000
    .venv/bin/python bench/bench_pg_writers.py --src /tmp/base/src   # another checkout's package
    .venv/bin/python bench/bench_pg_writers.py --blueplane /work/main/.venv/bin/blueplane  # A/B
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("BLUEPLANE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BLUEPLANE_BENCH_REDIS", "redis://127.0.0.1:6379/0")  # --stream-cache
T0 = 1_766_691_308_000


def make_events(k: int, procs: int, total: int) -> list[Any]:
    """Process ``k``'s share of the mix (every ``procs``-th event)."""
    from bench_store_write import generation_entries
    from blueplane.events import MessagePayload, TraceEvent, TraceMetadata, iso_from_ms
    from blueplane.fast_path.consumer import parse_entry

    gens = generation_entries(total)
    out = []
    for i in range(k, total, procs):
        if i % 7 != 3:
            out.append(gens[i])
            continue
        cid = f"conv-{i // 50}"
        msg = MessagePayload(
            generation_id=f"g{i}", item_id=f"b{i}", role="assistant" if i % 2 else "user",
            composer_id=cid, bubble_id=f"b{i}", text=f"fixed the bug number {i} in module foo " * 3,
            text_length=100, model="gpt-5", input_tokens=999, output_tokens=9,
            tokens_reported=True,
        )  # fmt: skip
        ev = TraceEvent(
            event_id=f"msg-{i}", session_id=cid, external_session_id=cid,
            timestamp=iso_from_ms(T0 + i),
            metadata=TraceMetadata(workspace_hash="a1b2c3d4e5f60718", workspace_path="/p"),
            payload=msg.to_json_dict(),
        )  # fmt: skip
        out.append(parse_entry(f"{T0 + i}-0", ev.to_fields()))
    return out


def cached_events(k: int, opts: argparse.Namespace) -> list[Any]:
    """Process ``k``'s share of the producers' stream (``bench_team.py --drain-only``'s cache):
    every ``procs``-th batch, as the group hands them out."""
    import redis

    from blueplane.fast_path.consumer import parse_entry

    r = redis.Redis.from_url(REDIS)
    key = f"bp-bench-pg-writers-{os.getpid()}"
    r.restore(key, 0, opts.stream_cache.read_bytes(), replace=True)
    try:
        entries = r.xrange(key)
    finally:
        r.delete(key)
    out = [parse_entry(i.decode(), f) for i, f in entries[: opts.events or None]]
    b = opts.batch
    return [ev for n in range(k * b, len(out), opts.procs * b) for ev in out[n : n + b]]


def _profile(prof: dict[str, float]) -> None:
    """Sum the time of each statement, COPY and COMMIT into ``prof``."""
    import psycopg

    execute, commit, copy = psycopg.Cursor.execute, psycopg.Connection.commit, psycopg.Cursor.copy
    executemany = psycopg.Cursor.executemany

    def timed_executemany(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return executemany(self, query, *a, **kw)
        finally:
            prof["(many) " + " ".join(str(query).split())[:63]] += time.perf_counter() - t

    def timed_execute(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(self, query, *a, **kw)
        finally:
            prof[" ".join(str(query).split())[:70]] += time.perf_counter() - t

    def timed_commit(self: Any) -> None:
        t = time.perf_counter()
        try:
            commit(self)
        finally:
            prof["COMMIT"] += time.perf_counter() - t

    @contextlib.contextmanager
    def timed_copy(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        with copy(self, query, *a, **kw) as c:
            yield c
        prof[" ".join(str(query).split())[:70]] += time.perf_counter() - t

    psycopg.Cursor.execute = timed_execute  # type: ignore[method-assign]
    psycopg.Connection.commit = timed_commit  # type: ignore[method-assign]
    psycopg.Cursor.copy = timed_copy  # type: ignore[method-assign]
    psycopg.Cursor.executemany = timed_executemany  # type: ignore[method-assign]


def _backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(k: int, opts: argparse.Namespace, url: str, ready: Any, go: Any, out: Any) -> None:
    from blueplane.stores import open_store

    if opts.stream_cache is not None:
        events = cached_events(k, opts)
    else:
        events = make_events(k, opts.procs, opts.events)
    store = open_store(url)
    prof: dict[str, float] = collections.defaultdict(float)
    if opts.profile:
        _profile(prof)
    ready.put(k)
    go.wait()
    started, cpu = time.perf_counter(), time.process_time()
    inserted = 0
    for i in range(0, len(events), opts.batch):
        inserted += store.write_batch(events[i : i + opts.batch], 3600).inserted
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    backend = _backend_cpu_s(store._write_conn.info.backend_pid)  # type: ignore[union-attr]
    store.close()
    out.put({"events": len(events), "inserted": inserted, "wall_s": wall, "cpu_s": cpu,
             "backend_cpu_s": backend, "profile": dict(prof)})  # fmt: skip


def package_root(blueplane: Path) -> Path:
    """The folder holding the ``blueplane`` package that the command ``blueplane`` runs (its
    venv's Python is asked), for ``--src``."""
    python = blueplane.parent / "python"
    code = "import blueplane, pathlib; print(pathlib.Path(blueplane.__file__).parent.parent)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--events", type=int, default=120_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--stream-cache", type=Path, default=None,
                    help="the producers' stream (bench_team.py --drain-only's cache) instead of"
                    " the mix; --events 0: all of it")  # fmt: skip
    ap.add_argument("--blueplane", type=Path, default=None,
                    help="another build's blueplane command: write with its package")  # fmt: skip
    opts = ap.parse_args()
    if opts.blueplane is not None:
        opts.src = package_root(opts.blueplane)
    sys.path[:0] = [str(opts.src), str(ROOT / "bench")]
    import psycopg

    from blueplane.stores import open_store

    name = f"bp_bench_writers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = f"{PG_SERVER}/{name}"
    try:
        open_store(url).close()
        ready, go, out = mp.Queue(), mp.Event(), mp.Queue()
        procs = [mp.Process(target=worker, args=(k, opts, url, ready, go, out))
                 for k in range(opts.procs)]  # fmt: skip
        for p in procs:
            p.start()
        for _ in procs:
            ready.get()
        started = time.perf_counter()
        go.set()
        results = [out.get() for _ in procs]
        wall = time.perf_counter() - started
        for p in procs:
            p.join()
        with psycopg.connect(url) as c:
            stored = c.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    total = sum(r["events"] for r in results)
    if opts.profile:
        summed: collections.Counter[str] = collections.Counter()
        for r in results:
            summed.update(r["profile"])
        for what, s in summed.most_common(40):
            print(f"{s:8.2f} s  {what}", file=sys.stderr)
    backend_cpu = sum(r["backend_cpu_s"] for r in results)
    print(json.dumps({
        "src": str(opts.src), "procs": opts.procs, "batch": opts.batch, "events": total,
        "stored": stored, "wall_s": round(wall, 2), "events_per_s": round(total / wall),
        "pg_backend_cpu_us_per_event": round(backend_cpu / total * 1e6),
        "writer_cpu_us_per_event": round(sum(r["cpu_s"] for r in results) / total * 1e6),
        "load_1m": round(os.getloadavg()[0], 2),
        "machine": "2 cores shared with other engineers' work",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
