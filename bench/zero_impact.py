"""Zero impact on Cursor, measured: a Cursor-like writer with and without the monitor capturing.

For each journal mode (rollback ``delete`` and ``wal``) the Cursor-like writer
(``bench/cursor_writer.py``: one VS Code-style ``BEGIN; INSERT …; END`` flush every
``--interval-ms``, 100 ms by default as VS Code's storage batches its writes, with Cursor's 1000 ms
busy timeout) runs ``--duration`` seconds against a fresh workspace database, alternately with no
reader and while ``blueplane run`` captures that workspace live with its default configuration
(file events, 50 ms debounce: every commit is read, as in production; in rollback-journal mode
one read covers two of the writer's 100 ms flushes) and an active session.

The two variants run as ``--pairs`` interleaved pairs, the order flipped every pair
(A B, B A, A B, …) so that a drift of the machine's load hits both alike. Per pair it reports the
writer's p50/p99 commit latency ratio with/without the monitor; per mode the median of the
pairs' ratios with their spread (min–max) and the ratio of the pooled p99s (every commit of every
run of one variant: 4 pairs of 60 s give 2,400 commits a side, so p99 is the 24th worst rather
than the 6th), with a 95 % interval for that pooled ratio from resampling whole pairs (the
commits of one run share its machine load, so resampling commits would claim too much). It also
checks the writer's busy errors (must be 0), that the file's journal mode
and ``user_version`` are unchanged, and how many of the written generations the monitor stored.
The load average is recorded before every run. Results go to ``bench/results/zero_impact.json``
and a markdown table to stdout.

    .venv/bin/python bench/zero_impact.py                      # 4 pairs of 60 s (~18 minutes)
    .venv/bin/python bench/zero_impact.py --duration 5 --pairs 1   # CI-sized
    .venv/bin/python bench/zero_impact.py --blueplane /work/main/.venv/bin/blueplane  # A/B

Redis: a private redis-server (the bundled one) in a temporary folder unless ``--redis-url``.
Exit status 1 when any run had a busy error or changed the database's mode or version.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# How the server is started: this venv's package unless ``--blueplane`` names another build's
# ``blueplane`` (A/B against /work/main: ``--blueplane /work/main/.venv/bin/blueplane``).
SERVER_CMD: list[str] = [sys.executable, "-m", "blueplane.cli"]
EXTRA_SERVER_ENV: dict[str, str] = {}
COMPARE_SERVER_ENV: dict[str, str] = {}  # a third variant: the server with these settings
COMPARE_SERVER_CMD: list[str] = []  # … or another build's server (``--compare-blueplane``)


def server_env(
    home: Path,
    user: Path,
    redis_url: str,
    poll_s: float | None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The server's environment: the default configuration, only told where things are."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(home),
        BLUEPLANE_REDIS_URL=redis_url,
        BLUEPLANE_CURSOR_DIRS=str(user),
        PYTHONUNBUFFERED="1",
    )
    if poll_s is not None:
        env["BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS"] = str(poll_s)
    env.update(EXTRA_SERVER_ENV)
    env.update(extra or {})
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
    if not (home / "telemetry.db").exists():
        return 0  # a variant with the fast path off stores nothing
    conn = sqlite3.connect(f"file:{home / 'telemetry.db'}?mode=ro", uri=True, timeout=5)
    try:
        sql = (
            "SELECT count(DISTINCT generation_id) FROM events"
            " WHERE event_type='database_trace' AND trace_type='generation'"
        )
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile, as the writer computes it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


@dataclass
class OneWorkspace:
    """A running server watching one workspace of a bundled Redis (the probes' set-up)."""

    work: Path
    db_path: Path
    url: str
    redis: BundledRedis
    proc: subprocess.Popen[bytes]
    home: Path


@contextmanager
def one_workspace(work: Path, mode: str) -> Iterator[OneWorkspace]:
    """One workspace database in ``mode``, a bundled Redis and the server, stopped after."""
    redis = BundledRedis(work / "redis")
    url = redis.start()
    try:
        user = UserDir(work / "Cursor" / "User")
        user.workspace_storage.mkdir(parents=True)
        user.global_storage.mkdir(parents=True)
        folder = work / "proj"
        folder.mkdir()
        ws = user.add_workspace(str(folder), journal_mode=mode, with_db=False)  # type: ignore[arg-type]
        home = work / "home"
        proc = start_server(home, user.path, folder, url, None)
        try:
            yield OneWorkspace(work, ws.db_path, url, redis, proc, home)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        redis.stop()


def start_server(
    home: Path,
    user: Path,
    folder: Path,
    redis_url: str,
    poll_s: float | None,
    extra: dict[str, str] | None = None,
    cmd: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``blueplane run`` with an active session on ``folder``, past its first sync."""
    cmd = cmd or SERVER_CMD
    home.mkdir(parents=True)
    env = server_env(home, user, redis_url, poll_s, extra)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [*cmd, "run"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home,
    )  # fmt: skip
    log.close()
    wait_running(home, proc)
    subprocess.run(
        [*cmd, "session", "start",
         "--workspace", str(folder), "--session-id", f"bench-{home.name}"],
        env=env, check=True, stdout=subprocess.DEVNULL, cwd=home,
    )  # fmt: skip
    deadline = time.monotonic() + 30.0
    while not _tracked(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the session's first sync has happened: the monitor waits for file events
    return proc


def _tracked(home: Path) -> bool:
    """The server's status lists the workspace (its session was seen)."""
    try:
        workspaces = json.loads((home / "status.json").read_text()).get("workspaces", {})
    except (OSError, ValueError):
        return False
    return any(not key.startswith("global") for key in workspaces)


def one_run(
    work: Path,
    user: UserDir,
    mode: str,
    variant: str,
    run: int,
    args: argparse.Namespace,
    redis_url: str,
) -> dict[str, Any]:
    """One writer run on a fresh workspace database, with or without the server capturing it."""
    name = f"{run:02d}-{variant}"
    folder = work / mode / "projects" / name
    folder.mkdir(parents=True)
    ws = user.add_workspace(str(folder), journal_mode=mode, with_db=False)  # type: ignore[arg-type]
    before = header_facts(ws.db_path)
    home = work / mode / f"home-{name}"
    proc = None
    if variant != "without_monitor":
        compare = variant == "with_monitor_compare"
        extra = COMPARE_SERVER_ENV if compare else None
        cmd = (COMPARE_SERVER_CMD or None) if compare else None
        proc = start_server(home, user.path, folder, redis_url, args.poll, extra, cmd)
    load = os.getloadavg()[0]
    try:
        report = run_writer(ws.db_path, mode, args.duration, args.interval_ms, work / mode / name)
    finally:
        if proc is not None:
            time.sleep(2.0)  # let the last flushes be read and stored
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    after = header_facts(ws.db_path)
    report["header_unchanged"] = before == after
    report["header"] = after
    report["load_avg_1m"] = round(load, 2)
    if proc is not None:
        report["generations_captured"] = stored_generations(home)
        report["server_exit_code"] = proc.returncode
    return report


def one_mode(work: Path, mode: str, args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """``--pairs`` interleaved with/without pairs of one journal mode, and their summary.

    With ``--compare-env`` each pair is a triple: the server also runs with that setting, in the
    same rotation, so both server variants are compared with the same runs without it.
    """
    user = UserDir(work / mode / "Cursor" / "User")
    user.workspace_storage.mkdir(parents=True)
    user.global_storage.mkdir(parents=True)
    variants = ["without_monitor", "with_monitor"]
    if COMPARE_SERVER_ENV or COMPARE_SERVER_CMD:
        variants.append("with_monitor_compare")
    pairs: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {v: [] for v in variants}
    per_pair: dict[str, list[list[float]]] = {v: [] for v in variants}
    for i in range(args.pairs):
        order = list(variants if i % 2 == 0 else variants[::-1])
        if len(order) == 3 and (i // 2) % 2 == 1:
            # Pairs 3-4 swap the two servers' places: over 4 pairs each runs 1st, 2nd (twice)
            # and 3rd, so neither gains from its place in the rotation.
            a, b = order.index("with_monitor"), order.index("with_monitor_compare")
            order[a], order[b] = order[b], order[a]
        pair: dict[str, Any] = {"order": list(order)}
        for variant in order:
            report = one_run(work, user, mode, variant, i, args, redis_url)
            latencies = report.pop("latencies_ms")
            pooled[variant].extend(latencies)
            per_pair[variant].append(latencies)
            pair[variant] = report
            print(
                f"{mode} pair {i + 1}/{args.pairs} {variant}: p50 {report['p50_ms']:.2f} "
                f"p99 {report['p99_ms']:.2f} ms, busy {report['busy_errors']}, "
                f"load {report['load_avg_1m']}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        for v in variants[1:]:
            suffix = "" if v == "with_monitor" else "_compare"
            for q in ("p50", "p99"):
                ratio = pair[v][f"{q}_ms"] / pair["without_monitor"][f"{q}_ms"]
                pair[f"{q}_ratio{suffix}"] = round(ratio, 3)
        pairs.append(pair)
    out: dict[str, Any] = {"pairs": pairs}
    for v in variants[1:]:
        summary = _summary(pairs, pooled, v, "" if v == "with_monitor" else "_compare")
        summary["pooled_p99_ratio_ci95"] = bootstrap_ci(per_pair["without_monitor"], per_pair[v])
        if v == "with_monitor":
            out.update(summary)
        else:
            out["compare"] = {
                "server_env": dict(COMPARE_SERVER_ENV),
                "server_cmd": list(COMPARE_SERVER_CMD or SERVER_CMD),
                **summary,
            }
    out["pooled_commits"] = {k: len(v) for k, v in pooled.items()}
    out["busy_errors"] = sum(p[v]["busy_errors"] for p in pairs for v in variants)
    out["header_unchanged"] = all(p[v]["header_unchanged"] for p in pairs for v in variants)
    return out


def _summary(
    pairs: list[dict[str, Any]], pooled: dict[str, list[float]], variant: str, suffix: str
) -> dict[str, Any]:
    """Median, min and max of the pairs' ratios, and the ratio of the pooled percentiles."""
    out: dict[str, Any] = {}
    for q, pct in (("p50", 50), ("p99", 99)):
        ratios = [p[f"{q}_ratio{suffix}"] for p in pairs]
        out[f"{q}_ratio_median"] = round(statistics.median(ratios), 3)
        out[f"{q}_ratio_min"] = min(ratios)
        out[f"{q}_ratio_max"] = max(ratios)
        base_q = percentile(pooled["without_monitor"], pct)
        mon_q = percentile(pooled[variant], pct)
        out[f"pooled_{q}_ms"] = {"without_monitor": round(base_q, 3), variant: round(mon_q, 3)}
        out[f"pooled_{q}_ratio"] = round(mon_q / base_q, 3)
    out["generations_written"] = sum(p[variant]["generations_written"] for p in pairs)
    out["generations_captured"] = sum(p[variant]["generations_captured"] for p in pairs)
    return out


def bootstrap_ci(
    without: list[list[float]], with_: list[list[float]], pct: float = 99, rounds: int = 1000
) -> list[float]:
    """95 % interval of the pooled ``pct`` ratio, resampling whole pairs (a cluster bootstrap).

    Commits of one run are not independent (a busy minute of the shared machine slows many of
    them), so the pairs are what is resampled: with 4 pairs the interval is wide, and honest.
    """
    rng = random.Random(8)
    n = len(without)
    ratios = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        base = percentile([x for i in picks for x in without[i]], pct)
        mon = percentile([x for i in picks for x in with_[i]], pct)
        ratios.append(mon / base)
    ratios.sort()
    return [round(ratios[int(0.025 * rounds)], 3), round(ratios[int(0.975 * rounds) - 1], 3)]


def _spread(s: dict[str, Any], q: str) -> str:
    return f"{s[q + '_ratio_median']:.2f} ({s[q + '_ratio_min']:.2f}–{s[q + '_ratio_max']:.2f})"


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "| journal mode | server | pairs | commits a side | busy errors "
        "| p50 ratio median (min–max) | p99 ratio median (min–max) "
        "| pooled p50 ms without / with | pooled p99 ms without / with | pooled p99 ratio "
        "| its 95 % interval (pairs resampled) | captured | file unchanged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in res["modes"].items():
        rows = [("with_monitor", "default config", r)]
        if "compare" in r:
            shown = " ".join(f"{k}={v}" for k, v in r["compare"]["server_env"].items())
            if COMPARE_SERVER_CMD:
                shown = " ".join([*COMPARE_SERVER_CMD, shown]).strip()
            rows.append(("with_monitor_compare", shown, r["compare"]))
        for variant, label, s in rows:
            p50, p99 = s["pooled_p50_ms"], s["pooled_p99_ms"]
            lines.append(
                f"| {mode} | {label} | {len(r['pairs'])} | {r['pooled_commits'][variant]} "
                f"| {sum(p[variant]['busy_errors'] for p in r['pairs'])} "
                f"| {_spread(s, 'p50')} | {_spread(s, 'p99')} "
                f"| {p50['without_monitor']:.2f} / {p50[variant]:.2f} "
                f"| {p99['without_monitor']:.2f} / {p99[variant]:.2f} "
                f"| {s['pooled_p99_ratio']:.2f} "
                f"| {s['pooled_p99_ratio_ci95'][0]:.2f}–{s['pooled_p99_ratio_ci95'][1]:.2f} "
                f"| {s['generations_captured']}/{s['generations_written']} "
                f"| {'yes' if r['header_unchanged'] else 'NO'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both modes with and without the monitor; write the JSON and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per writer run")
    ap.add_argument("--pairs", type=int, default=4, help="with/without pairs per journal mode")
    ap.add_argument("--interval-ms", type=float, default=100.0, help="writer flush interval")
    ap.add_argument(
        "--poll", type=float, default=None,
        help="monitor poll_interval_seconds (default: the default config's safety poll)",
    )  # fmt: skip
    ap.add_argument("--modes", default="delete,wal")
    ap.add_argument("--redis-url", default=None, help="default: a private bundled redis-server")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the server (e.g. a BLUEPLANE_… setting); repeatable",
    )  # fmt: skip
    ap.add_argument(
        "--compare-env", action="append", default=[], metavar="KEY=VALUE",
        help="also run the server with this setting in every pair (e.g. "
        "BLUEPLANE_BACKGROUND_PRIORITY=false), against the same runs without it; repeatable",
    )  # fmt: skip
    ap.add_argument(
        "--blueplane", default=None, metavar="PATH",
        help="the server's `blueplane` command (default: this venv's package), e.g. "
        "/work/main/.venv/bin/blueplane for an A/B against another build",
    )  # fmt: skip
    ap.add_argument(
        "--compare-blueplane", default=None, metavar="PATH",
        help="also run another build's `blueplane` in every pair, in the same rotation (an A/B "
        "that shares the runs without the monitor)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.blueplane:
        SERVER_CMD[:] = [args.blueplane]
    if args.compare_blueplane:
        COMPARE_SERVER_CMD[:] = [args.compare_blueplane]
    COMPARE_SERVER_ENV.update(kv.split("=", 1) for kv in args.compare_env)
    EXTRA_SERVER_ENV.update(kv.split("=", 1) for kv in args.server_env)
    with tempfile.TemporaryDirectory(prefix="bp-zero-impact-") as tmp:
        work = Path(tmp)
        bundled: BundledRedis | None = None
        url = args.redis_url
        if url is None:
            bundled = BundledRedis(work / "redis")
            url = bundled.start()
        try:
            modes = {m: one_mode(work, m, args, url) for m in args.modes.split(",")}
        finally:
            if bundled is not None:
                bundled.stop()
    res = {
        "benchmark": "zero_impact",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": args.duration,
        "pairs": args.pairs,
        "writer_interval_ms": args.interval_ms,
        "poll_interval_seconds": args.poll,
        "server_cmd": list(SERVER_CMD),
        "server_env": dict(EXTRA_SERVER_ENV),
        "compare_server_env": dict(COMPARE_SERVER_ENV),
        "compare_server_cmd": list(COMPARE_SERVER_CMD),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "modes": modes,
    }  # fmt: skip
    ok = all(r["busy_errors"] == 0 and r["header_unchanged"] for r in modes.values())
    res["ok"] = ok
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(markdown(res))
    print(f"\nwritten to {args.output}; {'OK' if ok else 'FAILED: busy errors or file changed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
