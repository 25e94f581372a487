"""Crash benchmark (issue 9): SIGKILL the server 100 times, then SIGKILL Redis itself.

The real ``blueplane run`` runs as its own process against a private Redis started here with
the bundled server's configuration (``BundledRedis``: appendonly, ``appendfsync everysec``,
``maxmemory-policy noeviction``; the machine's ``redis-server``). Cursor is played by two
``bench/cursor_writer.py`` processes (one WAL workspace, one rollback-journal workspace, each
appending generations and prompts) and by a thread here that appends user + assistant bubbles
to the global database, attributed to the WAL workspace. Sessions are started with
``blueplane session start``. Every committed generation id and bubble id is recorded, so the
counts below know exactly what Cursor wrote, whatever was killed when.

- phase A: ``--kills`` SIGKILLs of the server, each 0.3–2 s after it was (re)started;
- phase B: ``--redis-kills`` SIGKILLs of ``redis-server`` (restarted on the same port with the
  same AOF) 1–4 s apart, while the one server keeps running and reconnects.

After each phase the writers stop, the server catches up, and the bench counts what was
written against what is on ``telemetry:events`` and in ``BLUEPLANE_HOME/telemetry.db`` (read
read-only): lost, duplicated per generation id / bubble id, per ``event_id`` and per
(workspace, trace type, item, revision). Results: ``bench/results/crash.json`` and a table.

    .venv/bin/python bench/bench_crash.py                        # 100 + 10 kills, ~5 minutes
    .venv/bin/python bench/bench_crash.py --kills 10 --redis-kills 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import BlueplaneEnv, ServerProcess  # noqa: E402 - needs the repo root
from tests.fixtures.cursor_db import (  # noqa: E402
    CursorDb,
    make_assistant_bubble,
    make_global_composer,
    make_user_bubble,
    make_workspace_identifier,
)
from tests.integration.reliability_support import (  # noqa: E402
    OwnRedis,
    TraceEntry,
    aof_tail,
    own_env,
    project,
    status_json,
    store_traces,
    stream_traces,
)

WRITER = ROOT / "bench" / "cursor_writer.py"
RESULTS = ROOT / "bench" / "results" / "crash.json"
WRITER_INTERVAL_MS = 200  # one generation + one prompt per workspace every 0.2 s
WRITER_CAP = 5000  # ring never drops an item during the run: nothing may fall off unread
BUBBLE_INTERVAL_S = 0.3  # one user + one assistant bubble every 0.3 s
BUBBLES_PER_COMPOSER = 20


def blueplane_cmd() -> list[str]:
    """The installed ``blueplane`` entry point, else ``python -m blueplane.cli``."""
    script = Path(sys.executable).with_name("blueplane")
    return (
        [str(script), "run"] if script.is_file() else [sys.executable, "-m", "blueplane.cli", "run"]
    )


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``pred`` until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# --------------------------------------------------------------------------- Cursor, played


@dataclass
class BubbleWriter:
    """Appends a user and a settled assistant bubble to a composer of the global database.

    Like Cursor, each step rewrites ``composerData:<id>`` (its ``fullConversationHeadersOnly``
    grows) and adds the two ``bubbleId:`` keys in one transaction; a new composer every
    ``BUBBLES_PER_COMPOSER`` pairs. Only committed bubble ids are recorded.
    """

    db: CursorDb
    workspace_id: str
    folder: str
    written: list[str] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BubbleWriter:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bubbles", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop and return the ids written since ``start``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        out, self.written = self.written, []
        return out

    def _run(self) -> None:
        bubbles: list[dict[str, Any]] = []
        composer: dict[str, Any] | None = None
        while not self._stop.wait(BUBBLE_INTERVAL_S):
            if composer is None or len(bubbles) >= 2 * BUBBLES_PER_COMPOSER:
                bubbles = []
                composer = make_global_composer(
                    [],
                    workspaceIdentifier=make_workspace_identifier(self.workspace_id, self.folder),
                )
            pair = [make_user_bubble(f"question {len(bubbles)}"), make_assistant_bubble("Done.")]
            composer = make_global_composer(
                bubbles + pair,
                composerId=composer["composerId"],
                createdAt=composer["createdAt"],
                workspaceIdentifier=composer["workspaceIdentifier"],
            )
            cid = composer["composerId"]
            batch: dict[str, object | None] = {f"composerData:{cid}": composer}
            for b in pair:
                batch[f"bubbleId:{cid}:{b['bubbleId']}"] = b
            try:
                self.db.write_batch(batch, "cursorDiskKV")
            except sqlite3.OperationalError as exc:
                self.errors += 1
                print(f"bench_crash: bubble write failed: {exc}", file=sys.stderr)
                continue
            bubbles += pair
            self.written += [b["bubbleId"] for b in pair]


class Writers:
    """The two generation writers (own processes) and the bubble thread, for one phase."""

    def __init__(self, dbs: list[tuple[Path, str]], bubbles: BubbleWriter, out: Path) -> None:
        self.dbs = dbs
        self.bubbles = bubbles
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ids_files: list[Path] = []

    def start(self, phase: str) -> Writers:
        for db, mode in self.dbs:
            ids = self.out / f"{phase}-{mode}.ids"
            self.ids_files.append(ids)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(WRITER),
                        str(db),
                        "--journal-mode",
                        mode,
                        "--interval-ms",
                        str(WRITER_INTERVAL_MS),
                        "--duration",
                        "3600",
                        "--cap",
                        str(WRITER_CAP),
                        "--ids-file",
                        str(ids),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(self.out / f"{phase}-{mode}.err").open("ab"),
                )
            )
        self.bubbles.start()
        return self

    def stop(self) -> tuple[list[str], list[str], list[int]]:
        """SIGTERM the writers; the committed generation ids, bubble ids, writer exit codes."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in self.procs]
        gens: list[str] = []
        for ids in self.ids_files:
            gens += ids.read_text().split() if ids.exists() else []
        return gens, self.bubbles.stop(), codes


# --------------------------------------------------------------------------- counting


def dups(counter: Counter[Any]) -> int:
    return sum(1 for n in counter.values() if n > 1)


def count_phase(
    name: str,
    gens: list[str],
    bubbles: list[str],
    stream: list[TraceEntry],
    store: list[TraceEntry],
) -> dict[str, Any]:
    """Lost and duplicated, for what this phase wrote and over everything published so far."""
    s_gen = Counter(t.generation_id for t in stream if t.trace_type == "generation")
    d_gen = Counter(t.generation_id for t in store if t.trace_type == "generation")
    s_msg = Counter(t.item_key for t in stream if t.trace_type == "message")
    d_msg = Counter(t.item_key for t in store if t.trace_type == "message")

    def per(ids: Iterable[str], seen: Counter[str]) -> tuple[int, int]:
        ids = list(ids)
        return sum(1 for i in ids if seen[i] == 0), sum(1 for i in ids if seen[i] > 1)

    g_lost_s, g_dup_s = per(gens, s_gen)
    g_lost_d, g_dup_d = per(gens, d_gen)
    b_lost_s, b_dup_s = per(bubbles, s_msg)
    b_lost_d, b_dup_d = per(bubbles, d_msg)

    def rev_key(t: TraceEntry) -> tuple[str, str, str, int]:
        return (t.workspace_hash, t.trace_type, t.item_key, t.revision)

    stream_ids = {t.event_id for t in stream}
    store_ids = {t.event_id for t in store}
    return {
        "phase": name,
        "generations_written": len(gens),
        "bubbles_written": len(bubbles),
        "generations_lost_on_stream": g_lost_s,
        "generations_lost_in_store": g_lost_d,
        "generations_duplicated_on_stream": g_dup_s,
        "generations_duplicated_in_store": g_dup_d,
        "bubbles_lost_on_stream": b_lost_s,
        "bubbles_lost_in_store": b_lost_d,
        "bubbles_duplicated_on_stream": b_dup_s,
        "bubbles_duplicated_in_store": b_dup_d,
        # Over every trace published so far (generations, prompts, composers, messages):
        "traces_on_stream": len(stream),
        "traces_in_store": len(store),
        "event_ids_duplicated_on_stream": dups(Counter(t.event_id for t in stream)),
        "event_ids_duplicated_in_store": dups(Counter(t.event_id for t in store)),
        "item_revisions_duplicated_on_stream": dups(Counter(rev_key(t) for t in stream)),
        "item_revisions_duplicated_in_store": dups(Counter(rev_key(t) for t in store)),
        "event_ids_in_store_not_on_stream": len(store_ids - stream_ids),
        "event_ids_on_stream_not_in_store": len(stream_ids - store_ids),
    }


def caught_up(home: Path, gens: list[str], bubbles: list[str]) -> bool:
    store = store_traces(home)
    have = {t.generation_id for t in store if t.trace_type == "generation"}
    msgs = {t.item_key for t in store if t.trace_type == "message"}
    return set(gens) <= have and set(bubbles) <= msgs


def settle(env: BlueplaneEnv, redis: OwnRedis, gens: list[str], bubbles: list[str]) -> float:
    """Wait for the store to hold everything written (at most 90 s), then a few more polls."""
    t0 = time.monotonic()
    wait_for(lambda: caught_up(env.home, gens, bubbles), timeout=90)
    took = time.monotonic() - t0

    def drained() -> bool:  # nothing left for the consumer to store
        with redis.client() as c:
            try:
                groups = c.xinfo_groups("telemetry:events")
            except Exception:  # noqa: BLE001 - no group yet: nothing to drain
                return True
        return all(int(g.get("pending", 0)) == 0 and int(g.get("lag") or 0) == 0 for g in groups)

    wait_for(drained, timeout=30)
    time.sleep(1.5)  # several polls: a re-send would show up now
    return round(took, 1)


# --------------------------------------------------------------------------- phases


def phase_server_kills(
    env: BlueplaneEnv, kills: int, rng: random.Random, log: Path
) -> dict[str, Any]:
    """SIGKILL ``blueplane run`` ``kills`` times, 0.3–2 s after each (re)start."""
    running = 0
    early_exits: list[int] = []
    for _ in range(kills):
        (env.home / "status.json").unlink(missing_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                blueplane_cmd(), env=env.env(), stdout=out, stderr=subprocess.STDOUT,
                cwd=env.home,
            )  # fmt: skip
        try:
            time.sleep(rng.uniform(0.3, 2.0))
            state = status_json(env.home).get("server", {}).get("state", "starting")
            if proc.poll() is not None:  # a restart that failed: say so, the log says why
                early_exits.append(int(proc.returncode))
                continue
            running += state == "running"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
    return {"server_kills": kills - len(early_exits), "kills_while_running": running,
            "restarts_that_exited_by_themselves": early_exits}  # fmt: skip


def last_id(redis: OwnRedis) -> str:
    with redis.client() as c:
        return str(c.xinfo_stream("telemetry:events")["last-generated-id"])


def phase_redis_kills(
    redis: OwnRedis, sp: ServerProcess, kills: int, rng: random.Random, *, cut_tail: bool
) -> dict[str, Any]:
    """SIGKILL redis-server ``kills`` times, restarting it at once on the same port and AOF.

    ``cut_tail``: before the restart, cut the AOF back to its size 0.3–1 s earlier, which is
    what ``appendfsync everysec`` loses when the *machine* crashes (a SIGKILL of the process
    alone loses nothing Redis has written: the kernel still holds it).
    """
    rolled_back: list[int] = []
    went_back: list[bool] = []
    down_s: list[float] = []
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 4.0))
        size = aof_tail(redis).stat().st_size if cut_tail else 0
        if cut_tail:
            time.sleep(rng.uniform(0.3, 1.0))  # writes in this window are acknowledged, then lost
        with redis.client() as c:
            before = int(c.xlen("telemetry:events"))
        before_id = last_id(redis)
        t0 = time.monotonic()
        redis.kill()
        if cut_tail:
            with aof_tail(redis).open("r+b") as f:
                f.truncate(size)
        redis.start().wait_loaded()
        down_s.append(round(time.monotonic() - t0, 2))
        with redis.client() as c:
            after = int(c.xlen("telemetry:events"))
        after_id = last_id(redis)
        # Entries Redis had acknowledged and lost (a lower bound: entries added between the
        # XLEN and the kill are not seen); the stream's last id going back says so too.
        rolled_back.append(max(0, before - after))
        went_back.append(
            tuple(map(int, after_id.split("-"))) < tuple(map(int, before_id.split("-")))
        )
    time.sleep(2.0)
    return {
        "redis_kills": kills,
        "aof_tail_cut": cut_tail,
        "redis_down_seconds_max": max(down_s, default=0.0),
        "stream_entries_rolled_back_by_redis": rolled_back,
        "kills_where_stream_went_back": sum(went_back),
        "server_still_running": sp.proc is not None and sp.proc.poll() is None,
    }


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bp-crash-", dir=args.workdir))
    binary = Path(args.redis_server) if args.redis_server else None
    redis = OwnRedis(tmp / "redis", appendfsync="everysec", binary=binary).start()
    env = own_env(tmp, redis.url)
    env.extra.update(
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.1",
        BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS="0.2",
        BLUEPLANE_REDIS__RECONNECT_BACKOFF_SECONDS="0.2",
    )
    from tests.fixtures.cursor_db import UserDir

    ud = UserDir(env.cursor_dirs[0])
    ws_wal = ud.add_workspace(project(tmp, "wal-project"), journal_mode="wal")
    ws_del = ud.add_workspace(project(tmp, "rollback-project"), journal_mode="delete")
    for ws in (ws_wal, ws_del):
        ws.db.close()
    glob = ud.global_db("wal")
    bubbles = BubbleWriter(glob, ws_wal.id, ws_wal.folder_path or "")
    writers_dbs = [(ws_wal.db_path, "wal"), (ws_del.db_path, "delete")]
    log = env.home / "server.log"
    result: dict[str, Any] = {"workdir": str(tmp), "seed": args.seed}
    started = time.monotonic()

    all_writers: list[Writers] = []

    def track(w: Writers) -> Writers:
        all_writers.append(w)
        return w

    sp: ServerProcess | None = None
    try:
        sp = ServerProcess(env).start()
        for i, ws in enumerate((ws_wal, ws_del)):
            env.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", f"c{i}")

        # Phase A: the server SIGKILLed at random moments, restarted each time.
        t0 = time.monotonic()
        writers = track(Writers(writers_dbs, bubbles, tmp)).start("A")
        time.sleep(1.0)
        sp.kill()
        kills = phase_server_kills(env, args.kills, rng, log)
        gens, bubs, codes = writers.stop()
        sp = ServerProcess(env).start()
        catch_up = settle(env, redis, gens, bubs)
        with redis.client() as c:
            a = count_phase("A", gens, bubs, stream_traces(c), store_traces(env.home))
        a.update(kills, writer_exit_codes=codes, catch_up_seconds=catch_up,
                 seconds=round(time.monotonic() - t0, 1))  # fmt: skip
        a["components_after"] = components(env.home)
        result["server_sigkills"] = a
        print_phase(a)

        for phase, key, n, cut in (
            ("B", "redis_sigkills", args.redis_kills, False),
            ("C", "redis_sigkills_aof_tail_lost", args.aof_losses, True),
        ):
            if n <= 0:
                continue
            # Redis SIGKILLed while the server keeps running (C: and its last second lost).
            t0 = time.monotonic()
            writers = track(Writers(writers_dbs, bubbles, tmp)).start(phase)
            time.sleep(1.0)
            rk = phase_redis_kills(redis, sp, n, rng, cut_tail=cut)
            gens, bubs, codes = writers.stop()
            catch_up = settle(env, redis, gens, bubs)
            with redis.client() as c:
                r = count_phase(phase, gens, bubs, stream_traces(c), store_traces(env.home))
            r.update(rk, writer_exit_codes=codes, catch_up_seconds=catch_up,
                     seconds=round(time.monotonic() - t0, 1))  # fmt: skip
            r["components_after"] = components(env.home)
            result[key] = r
            print_phase(r)

        rc = sp.stop()
    finally:  # whatever failed, leave no process of ours running
        for w in all_writers:
            for p in w.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        bubbles.stop()
        if sp is not None:
            sp.kill()
        redis.stop()
    result["server_exit_code"] = rc
    result["total_seconds"] = round(time.monotonic() - started, 1)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def components(home: Path) -> dict[str, Any]:
    """Each component's status and counters from ``status.json`` (errors seen, duplicates)."""
    comps = status_json(home).get("components") or {}
    return {
        name: {"status": c.get("status"), "last_error": c.get("last_error"),
               "counters": c.get("counters")}
        for name, c in comps.items()
    }  # fmt: skip


def print_phase(r: dict[str, Any]) -> None:
    what = "server" if "server_kills" in r else "redis-server"
    what += ", AOF tail cut" if r.get("aof_tail_cut") else ""
    n = r.get("server_kills", r.get("redis_kills"))
    print(f"\n## phase {r['phase']}: {n} SIGKILLs ({what}), {r['seconds']} s")
    print("| what | written | lost on stream | lost in store | dup on stream | dup in store |")
    print("|---|---|---|---|---|---|")
    for what, key in (("generations", "generations"), ("bubbles", "bubbles")):
        print(f"| {what} | {r[key + '_written']} | {r[key + '_lost_on_stream']} | "
              f"{r[key + '_lost_in_store']} | {r[key + '_duplicated_on_stream']} | "
              f"{r[key + '_duplicated_in_store']} |")  # fmt: skip
    print(f"| all traces by event_id | {r['traces_on_stream']} on stream, "
          f"{r['traces_in_store']} stored | | | {r['event_ids_duplicated_on_stream']} | "
          f"{r['event_ids_duplicated_in_store']} |")  # fmt: skip
    print(f"| all traces by item+revision | | | | {r['item_revisions_duplicated_on_stream']} | "
          f"{r['item_revisions_duplicated_in_store']} |")  # fmt: skip
    skip = ("generations_", "bubbles_", "components_after")
    extra = {k: v for k, v in r.items() if not k.startswith(skip)}
    print(json.dumps(extra))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100, help="server SIGKILLs (phase A)")
    ap.add_argument("--redis-kills", type=int, default=10, help="redis-server SIGKILLs (B)")
    ap.add_argument("--aof-losses", type=int, default=5,
                    help="redis-server SIGKILLs with the AOF's last 0.3-1 s cut (C)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--redis-server", default=shutil.which("redis-server"),
                    help="redis-server binary (default: the one on PATH)")  # fmt: skip
    ap.add_argument("--workdir", default=None, help="parent of the temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    result = run(args)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis_version(args.redis_server),
        "sqlite": sqlite3.sqlite_version,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    bad = any(
        result[p][k]
        for p in ("server_sigkills", "redis_sigkills", "redis_sigkills_aof_tail_lost")
        for k in result.get(p, {})
        if ("lost" in k or "duplicated" in k) and isinstance(result[p][k], int)
    )
    return 1 if bad else 0


def redis_version(binary: str | None) -> str:
    if not binary:
        return "unknown"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "unknown")


if __name__ == "__main__":
    sys.exit(main())
