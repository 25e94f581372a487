"""What a file watch alone costs Cursor's writer: no watch, ``watchfiles``, the quiet watch.

No server, no read, no Redis: only a process watching the workspace folder the way the monitor
does (``ChangeWatcher``'s filter, 50 ms debounce) while ``bench/cursor_writer.py`` commits every
100 ms. The three variants run in interleaved groups (order flipped every group) per journal
mode; it prints each run's p50/p99 and the medians, and writes
``bench/results/watch_impact.json``.

    .venv/bin/python bench/watch_impact.py --groups 4 --duration 12     # about 6 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import zero_impact  # noqa: E402 - bench/ on sys.path

WATCH = r"""
import asyncio, sys
from watchfiles import awatch
from blueplane.cursor.change_watcher import _db_file
from blueplane.cursor.inotify_poll import poll_watch
fn = awatch if sys.argv[2] == "watchfiles" else poll_watch
async def main():
    async for _ in fn(sys.argv[1], debounce=50, step=50, recursive=False, watch_filter=_db_file):
        pass
asyncio.run(main())
"""
VARIANTS = ("off", "watchfiles", "quiet")


def main(argv: list[str] | None = None) -> int:
    """Run the groups for each mode; print and write the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--modes", default="delete,wal")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "watch_impact.json")
    args = ap.parse_args(argv)
    out: dict[str, object] = {"groups": args.groups, "duration_s": args.duration, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="bp-watch-impact-") as tmp:
        for mode in args.modes.split(","):
            runs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for i in range(args.groups):
                for v in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                    d = Path(tmp) / f"{mode}-{i}-{v}"
                    d.mkdir()
                    w = None
                    if v != "off":
                        w = subprocess.Popen([sys.executable, "-c", WATCH, str(d), v])
                        time.sleep(0.5)  # the watch is set up
                    r = zero_impact.run_writer(d / "state.vscdb", mode, args.duration, 100, d / "w")
                    if w is not None:
                        w.terminate()
                        w.wait()
                    runs[v].append((round(r["p50_ms"], 3), round(r["p99_ms"], 3)))
                    print(f"{mode} {i} {v}: p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f}",
                          file=sys.stderr, flush=True)  # fmt: skip
            summary = {
                v: {
                    "runs": runs[v],
                    "p50_median_ms": statistics.median(x[0] for x in runs[v]),
                    "p99_median_ms": statistics.median(x[1] for x in runs[v]),
                }
                for v in VARIANTS
            }
            out["modes"][mode] = summary  # type: ignore[index]
            for v in VARIANTS:
                s = summary[v]
                print(f"{mode} {v}: median p50 {s['p50_median_ms']:.3f} ms, "
                      f"median p99 {s['p99_median_ms']:.3f} ms")  # fmt: skip
    out["load_avg_at_end"] = os.getloadavg()
    args.output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
