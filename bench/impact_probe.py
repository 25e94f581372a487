"""Where a Cursor-like commit's time goes, with and without the monitor (a zero_impact diagnostic).

The writer loop of ``bench/cursor_writer.py`` (one ``BEGIN; INSERT …; END`` flush every
``--interval-ms``) runs in this process, and for every commit it records, besides the wall
time, the writer thread's own schedstat (``/proc/thread-self/schedstat``): time on a CPU, and
time runnable but waiting for one (run delay). The rest of the wall time is time blocked: in
``fsync``, or asleep in SQLite's busy handler after meeting a reader's lock. With the server
running it also samples the server's CPU time (all its threads and the bundled redis-server's)
around each commit: how much of it ran while Cursor committed, and how long after the previous
commit it was still busy.

    .venv/bin/python bench/impact_probe.py --mode delete --duration 30 --runs 2 \\
        [--blueplane PATH]

Prints per variant the percentiles of wall / on-CPU / run-delay / blocked, and the make-up of
the slowest 2 % of commits. Writes ``bench/results/impact_probe.json``. Diagnostic only: the
zero-impact figures come from ``bench/zero_impact.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zero_impact import percentile, start_server  # noqa: E402
from tests.fixtures.cursor_db import (  # noqa: E402
    GENERATIONS_KEY,
    PROMPTS_KEY,
    CursorDb,
    UserDir,
    make_generation,
    make_prompt,
    now_ms,
)

from blueplane.broker import BundledRedis  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "impact_probe.json"


def schedstat(path: str = "/proc/thread-self/schedstat") -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting) of a thread."""
    with open(path, encoding="ascii") as fh:
        run, wait, _ = fh.read().split()
    return int(run), int(wait)


def process_cpu_ns(pids: list[int]) -> int:
    """CPU ns used so far by every thread of these processes."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                total += schedstat(f"/proc/{pid}/task/{tid}/schedstat")[0]
            except (FileNotFoundError, ValueError):
                continue
    return total


def write_loop(
    db_path: Path, mode: str, duration: float, interval_ms: float, watch: list[int]
) -> list[dict[str, float]]:
    """The cursor_writer loop, recording each commit's breakdown."""
    db = CursorDb(db_path, journal_mode=mode, tables=("ItemTable",), persistent=True)  # type: ignore[arg-type]
    ring = db.generations()
    prompts: list[Any] = []
    rows: list[dict[str, float]] = []
    start = time.monotonic()
    batches = 0
    last_end = start
    try:
        while time.monotonic() - start < duration:
            batches += 1
            base = now_ms()
            ring.append(make_generation(base, "composer", f"batch {batches}"))
            prompts.append(make_prompt(f"batch {batches} prompt"))
            ring, prompts = ring[-100:], prompts[-100:]
            batch = {
                GENERATIONS_KEY: ring,
                PROMPTS_KEY: prompts,
                "workbench.panel.composerChatViewPane": {"lastFlushMs": base},
                "memento/workbench.parts.editor": {"batch": batches},
            }
            srv0 = process_cpu_ns(watch) if watch else 0
            r0, w0 = schedstat()
            t0 = time.perf_counter()
            db.write_batch(batch)
            t1 = time.perf_counter()
            r1, w1 = schedstat()
            srv1 = process_cpu_ns(watch) if watch else 0
            wall = (t1 - t0) * 1000
            cpu = (r1 - r0) / 1e6
            delay = (w1 - w0) / 1e6
            rows.append({
                "at_s": round(time.monotonic() - start, 4),
                "wall_ms": wall, "cpu_ms": cpu, "run_delay_ms": delay,
                "blocked_ms": max(0.0, wall - cpu - delay),
                "server_cpu_ms": (srv1 - srv0) / 1e6,
                "since_prev_ms": (t0 - last_end) * 1000,
            })  # fmt: skip
            last_end = t1
            delay_s = start + batches * interval_ms / 1000 - time.monotonic()
            if delay_s > 0:
                time.sleep(delay_s)
    finally:
        db.close()
    return rows


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"commits": len(rows)}
    for k in ("wall_ms", "cpu_ms", "run_delay_ms", "blocked_ms", "server_cpu_ms"):
        vals = [r[k] for r in rows]
        out[k] = {f"p{q}": round(percentile(vals, q), 3) for q in (50, 90, 99)}
        out[k]["mean"] = round(statistics.fmean(vals), 3)
    slow = sorted(rows, key=lambda r: r["wall_ms"])[-max(1, len(rows) // 50) :]
    out["slowest_2pct_mean"] = {
        k: round(statistics.fmean(r[k] for r in slow), 3)
        for k in ("wall_ms", "cpu_ms", "run_delay_ms", "blocked_ms", "server_cpu_ms")
    }
    out["commits_with_server_cpu"] = sum(1 for r in rows if r["server_cpu_ms"] > 0.05)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="delete", choices=("delete", "wal"))
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=2, help="interleaved without/with pairs")
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--blueplane", default=None, help="server command (default: this venv's)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument(
        "--compare-env", action="append", default=[], metavar="KEY=VALUE",
        help="a third variant: the server with this setting too (repeatable)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    compare = dict(kv.split("=", 1) for kv in args.compare_env)
    if args.blueplane:
        import bench.zero_impact as zi

        zi.SERVER_CMD[:] = [args.blueplane]
    order = ["without_monitor", "with_monitor"] + (["with_monitor_compare"] if compare else [])
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in order}
    with tempfile.TemporaryDirectory(prefix="bp-probe-") as tmp:
        work = Path(tmp)
        redis = BundledRedis(work / "redis")
        url = redis.start()
        redis_pid = redis.process.pid if redis.process is not None else None
        user = UserDir(work / "Cursor" / "User")
        user.workspace_storage.mkdir(parents=True)
        user.global_storage.mkdir(parents=True)
        try:
            for i in range(args.runs):
                for variant in order if i % 2 == 0 else order[::-1]:
                    folder = work / "projects" / f"{i}-{variant}"
                    folder.mkdir(parents=True)
                    ws = user.add_workspace(str(folder), journal_mode=args.mode, with_db=False)  # type: ignore[arg-type]
                    proc = None
                    watch: list[int] = []
                    if variant != "without_monitor":
                        extra = compare if variant == "with_monitor_compare" else None
                        home = work / f"home-{i}-{variant}"
                        proc = start_server(home, user.path, folder, url, None, extra)
                        watch = [proc.pid] + ([redis_pid] if redis_pid else [])
                    try:
                        rows = write_loop(
                            ws.db_path, args.mode, args.duration, args.interval_ms, watch
                        )
                    finally:
                        if proc is not None:
                            proc.send_signal(signal.SIGTERM)
                            proc.wait(timeout=30)
                    s = summarize(rows)
                    s["load_avg_1m"] = round(os.getloadavg()[0], 2)
                    results[variant].append({"summary": s, "rows": rows})
                    print(f"run {i} {variant}: {json.dumps(s)}", file=sys.stderr, flush=True)
        finally:
            redis.stop()
    for variant, runs in results.items():
        pooled = [r for run in runs for r in run["rows"]]
        print(f"\n{variant} pooled: {json.dumps(summarize(pooled), indent=1)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
