"""How soon a changed config file is in force: file replaced → new feature flags applied.

Runs the real ConfigReloader in-process on a real file (replaced by rename, as editors save),
N times, and reports the delay until the shared ``Rollout`` has the new flags.

    .venv/bin/python bench/bench_config_reload.py --trials 20

Writes ``bench/results/config_reload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from blueplane.config import load_settings
from blueplane.config_reloader import ConfigReloader
from blueplane.health import Health
from blueplane.rollout import Rollout

ROOT = Path(__file__).resolve().parent.parent


async def measure(trials: int) -> list[float]:
    folder = Path(tempfile.mkdtemp(prefix="bp-reload-"))
    cfg = folder / "blueplane.yaml"
    cfg.write_text("feature_flags:\n  python_db_monitor_rollout_percent: 0\n")
    settings = load_settings(cfg)
    rollout = Rollout(settings.feature_flags)
    reloader = ConfigReloader(settings, rollout, Health())
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    await asyncio.sleep(0.3)  # the watcher is up
    delays = []
    for i in range(1, trials + 1):
        tmp = folder / "next.tmp"
        tmp.write_text(f"feature_flags:\n  python_db_monitor_rollout_percent: {i}\n")
        started = time.monotonic()
        os.replace(tmp, cfg)
        while rollout.epoch < i:
            await asyncio.sleep(0.002)
        delays.append(time.monotonic() - started)
        await asyncio.sleep(0.1)
    stop.set()
    await task
    return delays


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "config_reload.json"
    )
    args = ap.parse_args()
    delays = asyncio.run(measure(args.trials))
    result = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "trials": args.trials,
        "p50_s": round(statistics.median(delays), 3),
        "max_s": round(max(delays), 3),
        "min_s": round(min(delays), 3),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
