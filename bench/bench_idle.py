"""Benchmark: what the real ``blueplane run`` does while nothing changes (issue 8, idle CPU).

The setup of ``bench_live.py`` (100 active workspaces with 100 generations each, the ~1 GB
global database, no configuration: file events on, 30 s safety poll): build the fixture, start
a private Redis and the server, send every ``session_start``, wait for the first sync and then
for the stream to be quiet, and measure the idle server over windows of ``--window`` seconds:

1. **clean** (nothing attached): CPU from ``/proc/PID/task/*/schedstat`` (ns on CPU, times
   scheduled = wake-ups) and ``utime + stime`` ticks, per thread; Redis commands the server sent
   (``INFO commandstats`` delta, our own ``INFO`` calls left out); writes of ``status.json``;
2. **strace** (``strace -f`` attached): every syscall, counted per name and per thread, and the
   files opened (``openat``/``stat``) — strace slows the process, so no CPU is taken from it;
3. **py-spy** (``py-spy record`` without ``--idle``): the Python stacks that ran, top frames.

    .venv/bin/python bench/bench_idle.py                      # full setup, 60 s windows
    .venv/bin/python bench/bench_idle.py --small --window 30  # 100 workspaces, small global DB
    .venv/bin/python bench/bench_idle.py --latency            # bench_live's latency phase first
    .venv/bin/python bench/bench_idle.py --blueplane /work/main/.venv/bin/blueplane  # A/B

Prints a JSON summary (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_live as bl  # noqa: E402
from blueplane.broker import BundledRedis  # noqa: E402

# 100 workspaces as in the full setup, a small global database: for iterating quickly.
SMALL = bl.Setup("idle-small", 100, 100, 60, 105, 1_000, 5_000_000, 2, 50, 0, 60.0, 600.0)
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"


def threads(pid: int) -> dict[int, dict[str, Any]]:
    """Per thread: name, ns on CPU and times scheduled (schedstat), utime+stime ticks."""
    out: dict[int, dict[str, Any]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            run_ns, _wait_ns, slices = (int(x) for x in (task / "schedstat").read_text().split())
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[int(task.name)] = {
            "comm": comm,
            "run_ns": run_ns,
            "slices": slices,
            "ticks": int(fields[11]) + int(fields[12]),
        }
    return out


def redis_commands(r: redis.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def clean_window(pid: int, r: redis.Redis, status: Path, window_s: float) -> dict[str, Any]:
    """Nothing attached: CPU and wake-ups per thread, Redis commands, status.json writes."""
    c0, t0 = redis_commands(r), threads(pid)
    mtimes: set[int] = set()
    start = time.monotonic()
    while time.monotonic() - start < window_s:
        with contextlib.suppress(OSError):  # between two status writes
            mtimes.add(status.stat().st_mtime_ns)
        time.sleep(0.25)
    elapsed = time.monotonic() - start
    t1, c1 = threads(pid), redis_commands(r)
    per_thread = {}
    for tid, a in t1.items():
        b = t0.get(tid, {"run_ns": 0, "slices": 0, "ticks": 0})
        name = f"{a['comm']}:{tid}"
        per_thread[name] = {
            "cpu_ms": round((a["run_ns"] - b["run_ns"]) / 1e6, 2),
            "wakeups": a["slices"] - b["slices"],
            "ticks": a["ticks"] - b["ticks"],
        }
    cmds = {k: v - c0.get(k, 0) for k, v in c1.items() if v - c0.get(k, 0)}
    cmds["info"] = cmds.get("info", 0) - 1  # our own INFO commandstats (the first one)
    cmds = {k: v for k, v in cmds.items() if v}
    cpu_ms = sum(t["cpu_ms"] for t in per_thread.values())
    ticks = sum(t["ticks"] for t in per_thread.values())
    return {
        "window_s": round(elapsed, 1),
        "cpu_ms": round(cpu_ms, 1),
        "cpu_pct_of_one_core": round(100 * cpu_ms / 1000 / elapsed, 3),
        "ticks": ticks,
        "ticks_pct_of_one_core": round(100 * ticks / bl.CLK_TCK / elapsed, 3),
        "wakeups": sum(t["wakeups"] for t in per_thread.values()),
        "threads": {k: v for k, v in per_thread.items() if v["wakeups"] or v["cpu_ms"]},
        "redis_commands": cmds,
        "status_json_versions_seen": len(mtimes),
    }


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)[( ]")


def strace_window(pid: int, window_s: float, log_path: Path) -> dict[str, Any]:
    """``strace -f`` for the window: syscalls per name and per thread, paths opened."""
    names = {tid: t["comm"] for tid, t in threads(pid).items()}
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(log_path), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(window_s)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    by_name: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if "resumed>" in line:
            continue  # the second half of an interrupted call: counted once, at its start
        m = _LINE.match(line)
        if not m:
            continue
        tid, call = int(m.group(1)), m.group(2)
        by_name[call] += 1
        by_thread[names.get(tid, "?") + f":{tid}"] += 1
        if call in ("openat", "stat", "newfstatat", "statx", "lstat", "access", "readlink"):
            q = re.search(r'"([^"]*)"', line)
            if q:
                p = q.group(1)
                paths[re.sub(r"/ws-\d+|/[0-9a-f]{32}", "/*", p)] += 1
    return {
        "window_s": window_s,
        "syscalls": sum(by_name.values()),
        "by_name": dict(by_name.most_common()),
        "by_thread": dict(by_thread.most_common()),
        "paths": dict(paths.most_common(20)),
    }


def pyspy_window(pid: int, window_s: float, out: Path) -> dict[str, Any]:
    """``py-spy record`` (active samples only): the top frames that ran."""
    subprocess.run(
        [str(PY_SPY), "record", "-p", str(pid), "-d", str(int(window_s)), "-r", "250",
         "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if out.exists():
        for line in out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            total += count
            frames = stack.split(";")
            leaf[frames[-1]] += count
            for f in set(frames):
                if "blueplane" in f or "asyncio" in f or "redis" in f:
                    inclusive[f] += count
    return {
        "samples": total,
        "rate_hz": 250,
        "top_leaf": dict(leaf.most_common(15)),
        "top_inclusive": dict(inclusive.most_common(25)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small global database (iterating)")
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--clean-windows", type=int, default=1)
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument(
        "--latency",
        action="store_true",
        help="run bench_live's latency phase (streamed bubbles, new generations) before idling",
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--blueplane",
        type=Path,
        default=bl.BLUEPLANE,
        help="the server's executable (e.g. /work/main/.venv/bin/blueplane for an A/B)",
    )
    ap.add_argument("--keep", type=Path, help="copy the strace/py-spy/server logs here")
    args = ap.parse_args(argv)
    setup = SMALL if args.small else bl.FULL
    bl.BLUEPLANE = args.blueplane  # ServerProcess starts this one

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    cached = bl.cached_global_db(setup)
    root = Path(tempfile.mkdtemp(prefix="blueplane-idle-", dir="/tmp"))
    system_redis = shutil.which("redis-server")
    redis_server = BundledRedis(root / "redis", binary=Path(system_redis) if system_redis else None)
    server: bl.ServerProcess | None = None
    fixture: bl.Fixture | None = None
    result: dict[str, Any] = {
        "setup": setup.name,
        "blueplane": str(args.blueplane),
        "load_avg": os.getloadavg(),
    }
    try:
        fixture = bl.make_fixture(setup, root, cached)
        url = redis_server.start()
        r = redis.Redis.from_url(url, socket_timeout=30)
        home = root / "home"
        env = bl.server_env(home, url, fixture)
        server = bl.ServerProcess(root, env)
        server.start()
        store = bl.StoreReader(home / "telemetry.db")
        bl.log(f"server pid {server.pid}; first sync")
        fs = bl.first_sync(r, store, fixture, setup, 30.0)
        result["first_sync_complete"] = fs["complete"]
        if args.latency:  # as bench_live does before its idle window
            lat = bl.latency(url, r, fixture, setup, timeout_s=35.0)
            result["latency"] = {k: lat[k] for k in ("generation", "bubble")}
            bl.log(f"latency phase done: {result['latency']}")
        bl.log(f"first sync complete={fs['complete']}; waiting for quiet")
        result["settle_wait_s"] = bl.wait_quiet(r, quiet_s=32.0, limit_s=180.0)
        before = bl.entries_added(r)
        result["clean"] = []
        for i in range(args.clean_windows):
            w = clean_window(server.pid, r, server.status_path, args.window)
            bl.log(
                f"clean {i}: {w['cpu_pct_of_one_core']} % ({w['cpu_ms']} ms, {w['ticks']} "
                f"ticks, {w['wakeups']} wake-ups) redis {w['redis_commands']}"
            )
            result["clean"].append(w)
        if not args.no_strace:
            result["strace"] = strace_window(server.pid, args.window, root / "strace.log")
            s = result["strace"]
            bl.log(f"strace: {s['syscalls']} syscalls {s['by_name']}")
        if not args.no_pyspy:
            result["pyspy"] = pyspy_window(server.pid, args.window, root / "pyspy.txt")
            bl.log(f"py-spy: {result['pyspy']['samples']} active samples")
        result["entries_added_meanwhile"] = bl.entries_added(r) - before
        result["server_alive"] = server.alive()
        r.close()
    finally:
        if server is not None:
            server.stop()
        redis_server.stop()
        if fixture is not None:
            fixture.close()
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("strace.log", "pyspy.txt", "server.log"):
                if (root / name).exists():
                    shutil.copyfile(root / name, args.keep / name)
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
