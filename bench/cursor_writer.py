"""A Cursor-like writer process, to measure whether a reader ever makes Cursor's writes fail.

Every ``--interval-ms`` it runs one VS Code-style flush: ``BEGIN; INSERT INTO ItemTable
VALUES (?,?),…; END`` with a 1000 ms busy timeout, rewriting the whole capped
``aiService.generations`` array plus a few other keys. It records each commit's latency and
each SQLITE_BUSY ("database is locked") error. Like Cursor, generations whose flush failed
stay in memory and go out with the next successful flush.

    python bench/cursor_writer.py DB --journal-mode wal --interval-ms 100 --duration 60 \\
        --generations-per-batch 1 --report out.json --ids-file ids.txt

``--ids-file`` gets every committed generationUUID, one per line, flushed after each commit,
so a test may kill other processes at any moment and still know what was written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.fixtures.cursor_db import (  # noqa: E402 - needs the repo root on sys.path
    GENERATIONS_KEY,
    PROMPTS_KEY,
    CursorDb,
    make_generation,
    make_prompt,
    now_ms,
)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def run_writer(
    db_path: str | os.PathLike[str],
    *,
    journal_mode: str = "wal",
    value_type: str = "text",
    interval_ms: float = 100.0,
    duration_s: float | None = 60.0,
    count: int | None = None,
    generations_per_batch: int = 1,
    cap: int = 100,
    ids_file: str | os.PathLike[str] | None = None,
    should_stop: Any = None,
) -> dict[str, Any]:
    """Run the write loop until ``duration_s``, ``count`` batches or ``should_stop()``.

    Returns the report dict: commits, busy_errors, other_errors, p50_ms, p99_ms, max_ms,
    generation_ids_written (in commit order), latencies_ms (each commit's, in order, so runs can
    be pooled) and a few run details.
    """
    db = CursorDb(
        db_path,
        journal_mode=journal_mode,  # type: ignore[arg-type]
        value_type=value_type,  # type: ignore[arg-type]
        tables=("ItemTable",),
        generations_cap=cap,
        persistent=True,
    )
    actual_mode = db.journal_mode_on_disk()  # an existing file keeps its own mode
    ring = db.generations()  # continue the ring already on disk, as Cursor does at start
    prompts = db.get_json(PROMPTS_KEY)
    prompts = prompts if isinstance(prompts, list) else []
    pending: list[str] = []  # generated, not yet committed
    written: list[str] = []
    latencies: list[float] = []
    busy = 0
    other = 0
    batches = 0
    ids_out: TextIO | None = open(ids_file, "a", encoding="utf-8") if ids_file else None  # noqa: SIM115
    start = time.monotonic()
    interval = interval_ms / 1000.0
    try:
        while True:
            if count is not None and batches >= count:
                break
            if duration_s is not None and time.monotonic() - start >= duration_s:
                break
            if should_stop is not None and should_stop():
                break
            batches += 1
            base = now_ms()
            for i in range(generations_per_batch):
                g = make_generation(base + i, "composer", f"batch {batches} gen {i + 1}")
                ring.append(g)
                pending.append(g["generationUUID"])
                prompts.append(make_prompt(f"batch {batches} prompt {i + 1}"))
            ring = ring[-cap:]
            prompts = prompts[-cap:]
            in_ring = {g.get("generationUUID") for g in ring if isinstance(g, dict)}
            pending = [p for p in pending if p in in_ring]  # fell off before being written
            batch = {
                GENERATIONS_KEY: ring,
                PROMPTS_KEY: prompts,
                "workbench.panel.composerChatViewPane": {"lastFlushMs": base},
                "memento/workbench.parts.editor": {"batch": batches},
            }
            t0 = time.perf_counter()
            try:
                db.write_batch(batch)
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    busy += 1
                else:
                    other += 1
                    print(f"cursor_writer: write failed: {exc}", file=sys.stderr)
            else:
                latencies.append((time.perf_counter() - t0) * 1000.0)
                written.extend(pending)
                if ids_out is not None and pending:
                    ids_out.write("".join(p + "\n" for p in pending))
                    ids_out.flush()
                    os.fsync(ids_out.fileno())
                pending = []
            next_at = start + batches * interval
            delay = next_at - time.monotonic()
            if delay > 0:
                if should_stop is None:
                    time.sleep(delay)
                else:
                    end = time.monotonic() + delay
                    while not should_stop() and time.monotonic() < end:
                        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    finally:
        if ids_out is not None:
            ids_out.close()
        db.close()
    return {
        "batches": batches,
        "commits": len(latencies),
        "busy_errors": busy,
        "other_errors": other,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "duration_s": round(time.monotonic() - start, 3),
        "journal_mode": actual_mode,
        "interval_ms": interval_ms,
        "generation_ids_written": written,
        "latencies_ms": [round(v, 4) for v in latencies],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exits 0 after writing the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", help="state.vscdb to write (created if missing)")
    ap.add_argument("--journal-mode", choices=("delete", "wal"), default="wal")
    ap.add_argument("--value-type", choices=("text", "blob"), default="text")
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--count", type=int, default=None, help="stop after N batches")
    ap.add_argument("--generations-per-batch", type=int, default=1)
    ap.add_argument("--cap", type=int, default=100, help="generations ring size")
    ap.add_argument("--report", default=None, help="write the JSON report here")
    ap.add_argument("--ids-file", default=None, help="append committed generationUUIDs here")
    args = ap.parse_args(argv)

    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    report = run_writer(
        args.db,
        journal_mode=args.journal_mode,
        value_type=args.value_type,
        interval_ms=args.interval_ms,
        duration_s=None if args.count is not None and args.duration <= 0 else args.duration,
        count=args.count,
        generations_per_batch=args.generations_per_batch,
        cap=args.cap,
        ids_file=args.ids_file,
        should_stop=lambda: stopping,
    )
    text = json.dumps(report, indent=2)
    if args.report:
        tmp = Path(args.report).with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, args.report)
    summary = {
        k: v for k, v in report.items() if k not in ("generation_ids_written", "latencies_ms")
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
