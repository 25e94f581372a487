"""Export throughput and memory on a store of generated traces (target: ≥ 50,000 records/s).

Builds (once, cached under the temp folder) a store of N generated traces — conversations of
user and assistant messages (~60-word answers with tokens), generations and composers, written
through ``TraceStore.write_batch`` as the consumer writes them — then runs, as separate
processes, ``blueplane export --format jsonl|csv --output FILE`` and
``blueplane traces --json --limit 50000``, and reports records/s and the child's peak RSS
(flat memory: the RSS must not grow with N).

    .venv/bin/python bench/bench_export.py --traces 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.store import TraceStore  # noqa: E402
from blueplane.ui.sample import fill, generate  # noqa: E402

END_MS = 1_795_000_000_000


def build_store(n: int) -> Path:
    """A home whose store holds ``n`` generated traces (reused when it already does)."""
    home = Path(tempfile.gettempdir()) / f"blueplane-bench-store-{n}"
    path = home / "telemetry.db"
    if path.exists():
        store = TraceStore(path, readonly=True)
        have = store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        store.close()
        if have >= n:
            TraceStore(path).close()  # the writer brings the derived tables up to date
            return home
        for p in home.glob("telemetry.db*"):
            p.unlink()
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = TraceStore(path)
    batches, _ = generate(n, workspaces=8, turns=8, end_ms=END_MS, span_days=180)
    fill(store, batches)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    print(f"built a store of {n} traces in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return home


def run(home: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env["BLUEPLANE_HOME"] = str(home)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "blueplane"), *args],
        env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"blueplane {' '.join(args)} failed: {proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(elapsed, 2), "peak_rss_mb": round(max(peak, before) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000)
    args = ap.parse_args()
    home = build_store(args.traces)
    out = home / "export.out"
    results = []
    for fmt in ("jsonl", "csv"):
        r = run(home, "export", "--format", fmt, "--output", str(out))
        r.update(command=f"export --format {fmt}", records=args.traces,
                 records_per_s=int(args.traces / r["seconds"]),
                 output_mb=round(out.stat().st_size / 1e6, 1))  # fmt: skip
        results.append(r)
        print(json.dumps(r))
    n = min(50_000, args.traces)
    r = run(home, "traces", "--json", "--limit", str(n))
    r.update(command=f"traces --json --limit {n}", records=n, records_per_s=int(n / r["seconds"]))
    results.append(r)
    print(json.dumps(r))
    out.unlink()
    report = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "store_traces": args.traces,
        "store_bytes": (home / "telemetry.db").stat().st_size,
        "load_average_1m": os.getloadavg()[0],
        "note": "machine shared with four other engineers' builds and tests",
        "results": results,
    }  # fmt: skip
    dest = ROOT / "bench" / "results" / "export.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {dest}")


if __name__ == "__main__":
    main()
