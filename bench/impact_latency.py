"""Capture latency while Cursor streams into one workspace: commit → XADD at a 10 Hz flush rhythm.

``bench_live.py`` writes each workspace at most every 0.3 s; this writes one workspace every
``--interval-ms`` (100 ms: VS Code's batching while an answer streams), where the quiet watch
reads a rollback-journal database once per two commits. Latency is the stream entry's id (the
XADD's millisecond) minus the commit's end, for every generation written.

    .venv/bin/python bench/impact_latency.py --mode delete [--blueplane PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.zero_impact as zi  # noqa: E402
from tests.fixtures.cursor_db import (  # noqa: E402
    GENERATIONS_KEY,
    CursorDb,
    make_generation,
    now_ms,
)

STREAM = "telemetry:events"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="delete", choices=("delete", "wal"))
    ap.add_argument("--commits", type=int, default=150)
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--blueplane", default=None, help="server command (default: this venv's)")
    args = ap.parse_args(argv)
    if args.blueplane:
        zi.SERVER_CMD[:] = [args.blueplane]
    commits: dict[str, float] = {}
    found: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bp-latency-") as tmp,
        zi.one_workspace(Path(tmp), args.mode) as one,
    ):
        db = CursorDb(one.db_path, journal_mode=args.mode, tables=("ItemTable",))  # type: ignore[arg-type]
        ring = db.generations()
        start = time.monotonic()
        for i in range(args.commits):
            g = make_generation(now_ms(), "composer", f"latency sample {i}")
            ring = [*ring, g][-100:]
            db.write_batch({GENERATIONS_KEY: ring})
            commits[g["generationUUID"]] = time.time() * 1000
            time.sleep(max(0.0, start + (i + 1) * args.interval_ms / 1000 - time.monotonic()))
        db.close()
        time.sleep(1.5)  # the last commit is read and published
        client = redis.Redis.from_url(one.url)
        for entry_id, fields in client.xrange(STREAM):
            xadd_ms = int(entry_id.split(b"-")[0])
            blob = b" ".join(v for v in fields.values() if isinstance(v, bytes))
            for gid, commit_ms in commits.items():
                if gid.encode() in blob:
                    found.append(xadd_ms - commit_ms)
                    break
        client.close()
        time.sleep(1.0)  # status.json is rewritten every 2 s: the last reads are counted
        counters = json.loads((one.home / "status.json").read_text())["components"][
            "database_monitor"
        ]["counters"]
    found.sort()
    if not found:
        print("no generation reached the stream")
        return 1
    print(
        f"{args.mode}: {len(found)} of {len(commits)} generations on the stream; commit → XADD "
        f"p50 {zi.percentile(found, 50):.0f} ms, p99 {zi.percentile(found, 99):.0f} ms, "
        f"max {found[-1]:.0f} ms; slowest {[round(x) for x in found[-3:]]}; monitor reads "
        f"{counters.get('reads')}, WAL commits found by their wal-index header only "
        f"{counters.get('wal_late_commits', 'n/a')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
