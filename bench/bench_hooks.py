"""Wall time of the installed hook command, run exactly as Cursor runs it.

``blueplane hooks install`` into a temporary ``~/.cursor/hooks.json``; then each event of the
recorded 3.x sequence (tests/fixtures/hooks), cycled, is piped to the command from hooks.json
through ``/bin/sh -c``, working directory ``~/.cursor``, environment ``HOME`` and
``PATH=/usr/bin:/bin`` only. Measured: Redis up (a private redis-server), and Redis down (every
event spooled). Baseline: ``/bin/sh -c 'python -I -S -c pass'``, the shell's and the
interpreter's own start-up.

    .venv/bin/python bench/bench_hooks.py [--calls 300]

Writes ``bench/results/hooks.json`` and prints a markdown table. Target: p99 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.broker import BundledRedis  # noqa: E402

SEQUENCE = ROOT / "tests" / "fixtures" / "hooks" / "cursor-3.7-sequence.jsonl"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(times: list[float]) -> dict[str, float]:
    ms = [t * 1000 for t in times]
    return {"calls": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(pct(ms, 95), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2)}  # fmt: skip


def run(cmd: list[str], stdin: bytes, cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, cwd=cwd, env=env, timeout=10)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"hook command failed ({proc.returncode}): {proc.stderr!r}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    user, home, ws = tmp / "user", tmp / "bp", tmp / "proj"
    (user / ".cursor").mkdir(parents=True)
    ws.mkdir()
    redis = BundledRedis(tmp / "redis")
    url = redis.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
        env.update(HOME=str(user), BLUEPLANE_HOME=str(home), BLUEPLANE_REDIS_URL=url)
        subprocess.run([sys.executable, "-m", "blueplane.cli", "hooks", "install"], env=env,
                       check=True, capture_output=True, cwd=tmp)  # fmt: skip
        hooks = json.loads((user / ".cursor" / "hooks.json").read_text())["hooks"]
        command = {e: next(x["command"] for x in v if "emit.py" in x["command"])
                   for e, v in hooks.items()}  # fmt: skip
        text = SEQUENCE.read_text().replace("__WORKSPACE__", str(ws))
        text = text.replace("__TRANSCRIPT__", str(tmp / "t.jsonl"))
        events = [json.loads(x) for x in text.splitlines() if x.strip()]
        cursor_env = {"HOME": str(user), "PATH": "/usr/bin:/bin"}
        cwd = user / ".cursor"

        def calls(n: int) -> list[float]:
            out = []
            for i in range(n):
                ev = events[i % len(events)]
                cmd = ["/bin/sh", "-c", command[ev["hook_event_name"]]]
                out.append(run(cmd, json.dumps(ev).encode(), cwd, cursor_env))
            return out

        calls(10)  # warm the page cache
        sh_pass = ["/bin/sh", "-c", f"{sys.executable} -I -S -c pass"]
        base = [run(sh_pass, b"", cwd, cursor_env) for _ in range(args.calls)]
        up = calls(args.calls)
        import redis as sync_redis

        n = sync_redis.Redis.from_url(url).xlen("telemetry:events")
        assert n == args.calls + 10, f"{n} entries on the stream"
        redis.stop()
        down = calls(max(50, args.calls // 3))
        spooled = len(list((home / "spool").glob("*.json")))
    finally:
        redis.stop()
    result = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "interpreter_start_baseline": summary(base),
        "redis_up": summary(up),
        "redis_down_spooled": {**summary(down), "spooled": spooled},
        "target_p99_ms": 50,
    }
    out = ROOT / "bench" / "results" / "hooks.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | p50 | p95 | p99 | max |\n|---|---|---|---|---|")
    for name in ("interpreter_start_baseline", "redis_up", "redis_down_spooled"):
        r = result[name]
        print(f"| {name} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['p99_ms']} ms | "
              f"{r['max_ms']} ms |")  # fmt: skip
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
