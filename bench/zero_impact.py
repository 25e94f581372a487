"""Zero impact on Cursor, measured: a Cursor-like writer with and without the monitor polling.

For each journal mode (rollback ``delete`` and ``wal``) the Cursor-like writer
(``bench/cursor_writer.py``: one ``BEGIN; INSERT …; END`` flush every ``--interval-ms`` with a
1000 ms busy timeout) runs ``--duration`` seconds against a fresh workspace database, once with
no reader and once while ``blueplane run`` polls that workspace at ``poll_interval_seconds``
0.05 with an active session. It reports the writer's busy errors (must be 0), its commit
latency p50/p99 with and without the monitor and their ratio, whether the file's journal mode
and ``user_version`` are unchanged, and how many of the written generations the monitor
captured. Results go to ``bench/results/zero_impact.json`` and a markdown table to stdout.

    .venv/bin/python bench/zero_impact.py --duration 60        # the full run (~5 minutes)
    .venv/bin/python bench/zero_impact.py --duration 5         # CI-sized

Redis: a private redis-server (the bundled one) in a temporary folder unless ``--redis-url``.
Exit status 1 when any run had a busy error or changed the database's mode or version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.cursor_db import UserDir  # noqa: E402

from blueplane.broker import BundledRedis  # noqa: E402 - after the sys.path set-up

WRITER = ROOT / "bench" / "cursor_writer.py"
RESULTS = ROOT / "bench" / "results" / "zero_impact.json"


def header_facts(db: Path) -> dict[str, int]:
    """Journal mode byte and user_version, read from the header without opening the file."""
    head = db.read_bytes()[:100]
    return {"journal_mode_byte": head[18], "user_version": int.from_bytes(head[60:64], "big")}


def run_writer(
    db: Path, mode: str, duration: float, interval_ms: float, out: Path
) -> dict[str, Any]:
    report = out.with_suffix(".json")
    ids = out.with_suffix(".ids")
    subprocess.run(
        [sys.executable, str(WRITER), str(db), "--journal-mode", mode,
         "--interval-ms", str(interval_ms), "--duration", str(duration),
         "--report", str(report), "--ids-file", str(ids)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(report.read_text())
    data["generations_written"] = len(data.pop("generation_ids_written", []))
    return data


EXTRA_SERVER_ENV: dict[str, str] = {}


def server_env(home: Path, user: Path, redis_url: str, poll_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(home),
        BLUEPLANE_REDIS_URL=redis_url,
        BLUEPLANE_CURSOR_DIRS=str(user),
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS=str(poll_s),
        BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="0.5",
        BLUEPLANE_FAST_PATH__BLOCK_MS="100",
        PYTHONUNBUFFERED="1",
    )
    env.update(EXTRA_SERVER_ENV)
    return env


def wait_running(home: Path, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"blueplane run exited early ({proc.returncode})")
        try:
            state = json.loads((home / "status.json").read_text())["server"]["state"]
            if state == "running":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError("blueplane run did not report running")


def stored_generations(home: Path) -> int:
    conn = sqlite3.connect(f"file:{home / 'telemetry.db'}?mode=ro", uri=True, timeout=5)
    try:
        sql = (
            "SELECT count(DISTINCT generation_id) FROM events"
            " WHERE event_type='database_trace' AND trace_type='generation'"
        )
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def one_mode(
    work: Path, mode: str, duration: float, interval_ms: float, poll_s: float, redis_url: str
) -> dict[str, Any]:
    user = UserDir(work / mode / "Cursor" / "User")
    user.workspace_storage.mkdir(parents=True)
    user.global_storage.mkdir(parents=True)
    results: dict[str, Any] = {}
    for variant in ("without_monitor", "with_monitor"):
        folder = work / mode / "projects" / variant
        folder.mkdir(parents=True)
        ws = user.add_workspace(str(folder), journal_mode=mode, with_db=False)  # type: ignore[arg-type]
        before = header_facts(ws.db_path)
        proc: subprocess.Popen[bytes] | None = None
        home = work / mode / f"home-{variant}"
        if variant == "with_monitor":
            home.mkdir(parents=True)
            env = server_env(home, user.path, redis_url, poll_s)
            log = (home / "server.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "blueplane.cli", "run"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home,
            )  # fmt: skip
            log.close()
            wait_running(home, proc)
            subprocess.run(
                [sys.executable, "-m", "blueplane.cli", "session", "start",
                 "--workspace", str(folder), "--session-id", f"bench-{mode}"],
                env=env, check=True, stdout=subprocess.DEVNULL, cwd=home,
            )  # fmt: skip
            time.sleep(1.0)  # the first sync has happened: the monitor is in its polling loop
        try:
            report = run_writer(ws.db_path, mode, duration, interval_ms, work / mode / variant)
        finally:
            if proc is not None:
                time.sleep(max(1.0, poll_s * 4))  # let the last flushes be read and stored
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        after = header_facts(ws.db_path)
        report["header_unchanged"] = before == after
        report["header"] = after
        if proc is not None:
            report["generations_captured"] = stored_generations(home)
            report["server_exit_code"] = proc.returncode
        results[variant] = report
    base, mon = results["without_monitor"], results["with_monitor"]
    results["p50_ratio"] = round(mon["p50_ms"] / base["p50_ms"], 3)
    results["p99_ratio"] = round(mon["p99_ms"] / base["p99_ms"], 3)
    return results


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "| journal mode | monitor | commits | busy errors | p50 ms | p99 ms | max ms "
        "| p50 ratio | p99 ratio | captured | file unchanged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in res["modes"].items():
        for variant in ("without_monitor", "with_monitor"):
            v = r[variant]
            with_mon = variant == "with_monitor"
            ratio = (f"{r['p50_ratio']:.2f}", f"{r['p99_ratio']:.2f}") if with_mon else ("", "")
            monitor = f"polling {res['poll_interval_seconds']} s" if with_mon else "off"
            captured = (
                f"{v['generations_captured']}/{v['generations_written']}"
                if "generations_captured" in v
                else "—"
            )
            lines.append(
                f"| {mode} | {monitor} "
                f"| {v['commits']} | {v['busy_errors']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} "
                f"| {v['max_ms']:.2f} | {ratio[0]} | {ratio[1]} | {captured} "
                f"| {'yes' if v['header_unchanged'] else 'NO'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both modes with and without the monitor; write the JSON and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per writer run")
    ap.add_argument("--interval-ms", type=float, default=100.0, help="writer flush interval")
    ap.add_argument("--poll", type=float, default=0.05, help="monitor poll_interval_seconds")
    ap.add_argument("--modes", default="delete,wal")
    ap.add_argument("--redis-url", default=None, help="default: a private bundled redis-server")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the server (e.g. a BLUEPLANE_… setting); repeatable",
    )  # fmt: skip
    args = ap.parse_args(argv)
    EXTRA_SERVER_ENV.update(kv.split("=", 1) for kv in args.server_env)
    with tempfile.TemporaryDirectory(prefix="bp-zero-impact-") as tmp:
        work = Path(tmp)
        bundled: BundledRedis | None = None
        url = args.redis_url
        if url is None:
            bundled = BundledRedis(work / "redis")
            url = bundled.start()
        try:
            modes = {
                m: one_mode(work, m, args.duration, args.interval_ms, args.poll, url)
                for m in args.modes.split(",")
            }
        finally:
            if bundled is not None:
                bundled.stop()
    res = {
        "benchmark": "zero_impact",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": args.duration,
        "writer_interval_ms": args.interval_ms,
        "poll_interval_seconds": args.poll,
        "server_env": dict(EXTRA_SERVER_ENV),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
        "modes": modes,
    }  # fmt: skip
    ok = all(
        r[v]["busy_errors"] == 0 and r[v]["header_unchanged"]
        for r in modes.values()
        for v in ("without_monitor", "with_monitor")
    )
    res["ok"] = ok
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(markdown(res))
    print(f"\nwritten to {args.output}; {'OK' if ok else 'FAILED: busy errors or file changed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
