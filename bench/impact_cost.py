"""What the server spends per Cursor commit: reads, CPU and bytes written (server and Redis).

One ``bench/cursor_writer.py`` run (a flush every 100 ms) on a fresh workspace database while
``blueplane run`` (default configuration, an active session) captures it, against a private
bundled redis-server. Counted from ``/proc/<pid>/stat`` and ``/proc/<pid>/io`` of the server and
of Redis, and from the monitor's own ``reads`` counter in ``status.json``: everything the
server does after each commit competes with Cursor's next one for the CPUs and the disk.

    .venv/bin/python bench/impact_cost.py --mode delete --duration 20 [--blueplane PATH]

Diagnostic; prints one line per process and the writer's p50/p99.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.zero_impact as zi  # noqa: E402

TICK_MS = 10  # /proc/<pid>/stat counts CPU in 10 ms clock ticks (USER_HZ 100)


def proc_counters(pid: int) -> dict[str, int]:
    """CPU ticks and write counters of one process (all its threads)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io", encoding="ascii") as fh:
        for line in fh:
            key, value = line.split(":")
            out[key] = int(value)
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    out["cpu_ticks"] = int(fields[11]) + int(fields[12])
    return out


def monitor_reads(home: Path) -> int:
    status = json.loads((home / "status.json").read_text())
    return int(status["components"]["database_monitor"]["counters"].get("reads", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="delete", choices=("delete", "wal"))
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--blueplane", default=None, help="server command (default: this venv's)")
    args = ap.parse_args(argv)
    if args.blueplane:
        zi.SERVER_CMD[:] = [args.blueplane]
    with (
        tempfile.TemporaryDirectory(prefix="bp-cost-") as tmp,
        zi.one_workspace(Path(tmp), args.mode) as one,
    ):
        assert one.redis.process is not None
        pids = {"server": one.proc.pid, "redis": one.redis.process.pid}
        before = {k: proc_counters(p) for k, p in pids.items()}
        reads0 = monitor_reads(one.home)
        report = zi.run_writer(one.db_path, args.mode, args.duration, 100.0, one.work / "w")
        time.sleep(2.5)  # the last commit is read and stored; status.json rewritten
        after = {k: proc_counters(p) for k, p in pids.items()}
        reads = monitor_reads(one.home) - reads0
    n = report["commits"]
    for name in pids:
        a, b = after[name], before[name]
        print(
            f"{name}: per commit {(a['cpu_ticks'] - b['cpu_ticks']) * TICK_MS / n:.2f} ms CPU, "
            f"{(a['syscw'] - b['syscw']) / n:.1f} write calls, "
            f"{(a['wchar'] - b['wchar']) / n / 1024:.1f} KiB written"
        )
    print(
        f"monitor reads {reads} for {n} commits ({reads / n:.2f} a commit); writer p50 "
        f"{report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} ms, busy {report['busy_errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
