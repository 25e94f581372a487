"""Consumer → store throughput of the real server (target: ≥ 20,000 events/s sustained).

Starts a private ``redis-server`` on a free loopback port, pre-fills ``telemetry:events`` with
N realistic ``database_trace`` entries (built with ``TraceEvent`` as the publisher builds them,
~1 KB each with prompt/response text), then runs ``.venv/bin/blueplane run`` as a separate
process (fresh ``BLUEPLANE_HOME``, empty ``BLUEPLANE_CURSOR_DIRS``) and waits until its consumer
group has acknowledged every entry (the consumer acknowledges only after the store's commit).
The store is then checked read-only: it must hold exactly N events.

    .venv/bin/python bench/bench_consumer.py --events 100000 --runs 3

*wall* counts from the server's start (process start-up included); *sustained* counts from the
first acknowledged batch to the last. The server runs as configured by default, at background
priority (nice 10): on a machine that other work keeps busy it gets ~10 % of a contended core,
so the figure measures the other work as much as the consumer. ``--normal-priority``
(``BLUEPLANE_BACKGROUND_PRIORITY=false``) measures the consumer at the priority of that work.
Timestamps increase with the entry (a base time + 1 ms per entry), as in a live stream, so
the time-ordered indexes (``events_by_time``, ``…_by_workspace``, ``…_by_machine``) are appended
to. ``--cycling-times`` gives the old entries (timestamps cycling within one hour, which insert
at random places in those indexes: a cost a live stream does not have).
``--blueplane PATH`` runs another build's ``blueplane`` (e.g. main's) for an A/B with this
script. Writes ``bench/results/consumer.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.events import TraceEvent, TraceMetadata  # noqa: E402

STREAM = "telemetry:events"
GROUP = "blueplane-fast-path"
BLUEPLANE = ROOT / ".venv" / "bin" / "blueplane"
WORDS = [
    "the",
    "model",
    "reads",
    "the",
    "file",
    "then",
    "edits",
    "the",
    "function",
    "and",
    "runs",
    "the",
    "tests",
    "again",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words))


BASE_MS = 1767323045000  # 2026-01-02T03:04:05Z


def timestamp(i: int, cycling: bool) -> str:
    """Entry ``i``'s timestamp: increasing by 1 ms per entry, or (``cycling``) the old ones."""
    if cycling:
        return f"2026-01-02T03:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"
    at = datetime.fromtimestamp((BASE_MS + i) / 1000, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{(BASE_MS + i) % 1000:03d}Z"


def entry(i: int, workspace: str, cycling: bool = False) -> dict[str, str]:
    gen = f"gen-{i:08d}"
    event = TraceEvent(
        event_id=TraceEvent.make_event_id(workspace, f"generation:{gen}:0"),
        session_id=f"session-{i % 20}",
        external_session_id=f"session-{i % 20}",
        timestamp=timestamp(i, cycling),
        metadata=TraceMetadata(workspace_hash=workspace),
        payload={
            "trace_type": "generation",
            "generation_id": gen,
            "revision": 0,
            "source_layout": "item_generations",
            "model": "claude-4-sonnet",
            "unix_ms": BASE_MS + i,
            "prompt": text(i, 60),
            "response": text(i + 7, 90),
            "input_tokens": 1200 + i % 300,
            "output_tokens": 300 + i % 50,
        },
    )
    return event.to_fields()


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc, url


def prefill(client: redis.Redis, n: int, cycling: bool = False) -> float:
    """XADD n entries in pipelined chunks; returns their mean size in bytes."""
    workspace = "a1b2c3d4e5f60718"
    size = 0
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            fields = entry(i, workspace, cycling)
            size += sum(len(k) + len(v.encode()) for k, v in fields.items())
            pipe.xadd(STREAM, fields)
        pipe.execute()
    return size / n


def acked_count(client: redis.Redis) -> int:
    """Entries the server's consumer group has acknowledged (it does so after each commit).

    Read from Redis (one ``XINFO GROUPS``), not by counting the store: a ``count(*)`` of 100 k
    events every 20 ms took 2 ms of CPU each, ~8 % of a core beside the server on 2 cores."""
    for g in client.xinfo_groups(STREAM):
        if g["name"] in (GROUP, GROUP.encode()):
            return int(g.get("entries-read") or 0) - int(g["pending"])
    return 0


def process_usage(pid: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads) and peak RSS of a running process (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    fields = stat.rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    peak = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")), "0")
    return {"cpu_s": cpu_s, "rss_peak_mb": round(int(peak) / 1024, 1), "threads": threads(pid)}


def threads(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (the event loop) and of the others (the store's writer
    thread and a few idle ones): which one is the bottleneck."""
    out: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else "other threads"
        fields = stat.rpartition(")")[2].split()
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        out[name] = round(out.get(name, 0.0) + cpu, 2)
    return out


def run_once(
    n: int,
    batch_size: int | None,
    profile: Path | None = None,
    normal_priority: bool = False,
    cycling: bool = False,
    blueplane: Path = BLUEPLANE,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-consumer-") as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        (root / "cursor").mkdir()
        redis_proc, url = start_redis(root / "redis")
        client = redis.Redis.from_url(url)
        server: subprocess.Popen[bytes] | None = None
        try:
            entry_bytes = prefill(client, n, cycling)
            env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
            env.update(
                BLUEPLANE_HOME=str(root / "home"),
                BLUEPLANE_REDIS_URL=url,
                BLUEPLANE_CURSOR_DIRS=str(root / "cursor"),
                BLUEPLANE_LOG_LEVEL="WARNING",
            )
            if batch_size:
                env["BLUEPLANE_FAST_PATH__BATCH_SIZE"] = str(batch_size)
            if normal_priority:
                env["BLUEPLANE_BACKGROUND_PRIORITY"] = "false"
            log = (root / "server.log").open("wb")
            started = time.monotonic()
            cmd = [str(blueplane), "run"]
            if profile is not None:  # collapsed stacks of the server, for finding hot spots
                spy = ROOT / ".venv" / "bin" / "py-spy"
                cmd = [str(spy), "record", "-f", "raw", "-r", "200", "-o", str(profile), "--", *cmd]
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
            first = None
            done = 0
            deadline = started + max(120.0, n / 1000)
            while done < n:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {(root / 'server.log').read_text()}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out with {done}/{n} acknowledged")
                done = acked_count(client)
                if done and first is None:
                    first = (time.monotonic(), done)
                time.sleep(0.02)
            finished = time.monotonic()
            usage = process_usage(server.pid) if profile is None else {}
            pending = client.xpending(STREAM, GROUP)["pending"]
            server.send_signal(2)  # SIGINT: py-spy passes it on and writes its profile
            server.wait(30)
            log.close()
            conn = sqlite3.connect(f"file:{root / 'home' / 'telemetry.db'}?mode=ro", uri=True)
            stored = conn.execute("SELECT count(DISTINCT event_id) FROM events").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            conn.close()
            assert first is not None
            sustained_s = finished - first[0]
            return {
                "load_average_1m_after": round(os.getloadavg()[0], 2),
                "events": n,
                "entry_bytes_mean": round(entry_bytes),
                "batch_size": batch_size or "default",
                "server_priority": "normal" if normal_priority else "background (default)",
                "timestamps": "cycling" if cycling else "increasing",
                "blueplane": str(blueplane),
                "wall_s": round(finished - started, 3),
                "wall_events_per_s": round(n / (finished - started)),
                "sustained_s": round(sustained_s, 3),
                "sustained_events_per_s": round((n - first[1]) / sustained_s)
                if sustained_s > 0
                else None,
                "stored_distinct": stored,
                "stored_rows": rows,
                "pending_after": pending,
                # CPU of the whole server process (start-up included) per event: less
                # sensitive to the machine's other load than the rates
                "server_cpu_us_per_event": round(usage["cpu_s"] * 1e6 / n, 1) if usage else None,
                "server_rss_peak_mb": usage.get("rss_peak_mb"),
                # CPU µs per event of the event loop and of the other threads (the writer)
                "server_thread_cpu_us_per_event": {
                    k: round(v * 1e6 / n, 1) for k, v in usage.get("threads", {}).items()
                },
            }
        finally:
            if server is not None and server.poll() is None:
                server.kill()
                server.wait(10)
            client.close()
            redis_proc.terminate()
            redis_proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config default")
    ap.add_argument(
        "--normal-priority",
        action="store_true",
        help="run the server with background_priority: false (default: as configured, nice 10)",
    )
    ap.add_argument(
        "--cycling-times",
        action="store_true",
        help="timestamps cycling within one hour (the old entries), not increasing",
    )
    ap.add_argument(
        "--blueplane", type=Path, default=BLUEPLANE, help="the blueplane executable to run"
    )
    ap.add_argument("--py-spy", type=Path, default=None, help="profile the server to FILE")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "consumer.json")
    args = ap.parse_args()
    if not args.blueplane.exists():
        raise SystemExit(f"{args.blueplane} missing: run ./scripts/test -q -k nothing first")
    results = [
        run_once(
            args.events,
            args.batch_size,
            args.py_spy,
            args.normal_priority,
            args.cycling_times,
            args.blueplane,
        )
        for _ in range(args.runs)
    ]
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis": redis_version,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| run | events | entry | wall | wall events/s | sustained events/s | stored | load"
        " | server CPU/event | server RSS peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, r in enumerate(results, 1):
        print(
            f"| {k} | {r['events']:,} | {r['entry_bytes_mean']} B | {r['wall_s']:.2f} s | "
            f"{r['wall_events_per_s']:,} | {r['sustained_events_per_s']:,} | "
            f"{r['stored_distinct']:,} distinct / {r['stored_rows']:,} rows | "
            f"{r['load_average_1m_after']} | {r['server_cpu_us_per_event']} us | "
            f"{r['server_rss_peak_mb']} MB |"
        )
        print(f"  threads, CPU us/event: {r['server_thread_cpu_us_per_event']}")
    bad = [
        r for r in results if r["stored_distinct"] != r["events"] or r["stored_rows"] != r["events"]
    ]
    if bad:
        raise SystemExit("the store does not hold exactly the events sent")


if __name__ == "__main__":
    main()
