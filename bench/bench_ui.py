"""The page's JSON endpoints on a store of 1 M generated traces (target: overview p95 ≤ 200 ms).

Uses the store ``bench_export.py`` builds (generated conversations written through
``TraceStore.write_batch``, so the writer's derived tables are filled as in production), starts
``blueplane ui`` as a separate process on a free loopback port, and times sequential requests
of each endpoint as the page makes them (with and without the workspace filter). The overview
is cached per change of the store; ``fresh=1`` measures it computed on every request (what a
store being written to every second costs).

    .venv/bin/python bench/bench_ui.py --traces 1000000 --requests 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_export import build_store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    return (time.perf_counter() - started) * 1000, body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()
    home = build_store(args.traces)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env["BLUEPLANE_HOME"] = str(home)
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "blueplane"), "ui", "--port", str(port)],
        env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(base + "/api/version")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ws = json.loads(get(base + "/api/workspaces")[1])["workspaces"][0]["workspace_hash"]
        endpoints = {
            "overview": "/api/overview",
            "overview?workspace": f"/api/overview?workspace={ws}",
            "overview (uncached)": "/api/overview?fresh=1",
            "overview?workspace (uncached)": f"/api/overview?workspace={ws}&fresh=1",
            "feed": "/api/feed",
            "feed?workspace": f"/api/feed?workspace={ws}",
            "version": "/api/version",
            "conversations": "/api/conversations",
            "conversations?q (common words)": "/api/conversations?q=refactor%20parser",
            "conversations?q (a title)": "/api/conversations?q=Topic%204242",
            "conversation page": "/api/conversations/conv-0004242",
        }
        results = {}
        for name, path in endpoints.items():
            get(base + path)  # warm
            times = sorted(get(base + path)[0] for _ in range(args.requests))
            results[name] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                "max_ms": round(times[-1], 1),
            }
            print(name, results[name])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    report = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "store_traces": args.traces, "requests": args.requests,
        "load_average_1m": os.getloadavg()[0],
        "note": "machine shared with four other engineers' builds and tests",
        "target": "overview p95 <= 200 ms", "results": results,
    }  # fmt: skip
    dest = ROOT / "bench" / "results" / "ui.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {dest}")


if __name__ == "__main__":
    main()
