"""A parallel run you can watch: the output shown in docs/migration.md comes from this script.

Starts a private Redis and ``blueplane run`` on a throw-away Cursor folder, writes generations
into a workspace database, plays the extension's TypeScript monitor (its exact stream shape,
typescript-monitor-events.md) for some of them plus one Python never saw and one malformed
event, then prints ``blueplane compare`` (table and ``--json``) and the workspace's rollout
from ``blueplane status --json``. Usage: ``.venv/bin/python scripts/demo_parallel_run.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.cursor_db import UserDir, make_generation, now_ms  # noqa: E402
from tests.integration.test_parallel_run import extension_event  # noqa: E402

from blueplane.broker import BundledRedis  # noqa: E402
from blueplane.events import normalise_workspace_path, workspace_hash  # noqa: E402


def wait(predicate, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def show(w: dict) -> None:
    keys = ("workspace_hash", "status", "rollout")
    print(json.dumps({k: w.get(k) for k in keys}, ensure_ascii=False))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bp-demo-"))
    redis_server = BundledRedis(tmp / "redis", binary=Path(shutil.which("redis-server") or ""))
    url = redis_server.start()
    home, user = tmp / "home", tmp / "Cursor" / "User"
    (user / "workspaceStorage").mkdir(parents=True)
    (user / "globalStorage").mkdir(parents=True)
    home.mkdir()
    cfg = tmp / "blueplane.yaml"
    cfg.write_text("feature_flags:\n  python_db_monitor_rollout_percent: 100\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(
        BLUEPLANE_HOME=str(home),
        BLUEPLANE_REDIS_URL=url,
        BLUEPLANE_CURSOR_DIRS=str(user),
        BLUEPLANE_CONFIG=str(cfg),
        COLUMNS="120",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blueplane.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            cwd=home,
        )

    folder = tmp / "projects" / "shop"
    folder.mkdir(parents=True)
    ws = UserDir(user).add_workspace(str(folder))
    server = subprocess.Popen(
        [sys.executable, "-m", "blueplane.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=home,
    )
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    try:
        wait(
            lambda: (
                (home / "status.json").exists()
                and json.loads((home / "status.json").read_text())["server"].get("state")
                == "running"
            ),
            "server",
        )
        cli("session", "start", "--workspace", str(folder), "--session-id", "demo-session")
        h = workspace_hash(normalise_workspace_path(str(folder)))
        texts = [
            "add a cart endpoint",
            "write tests for cart",
            "fix the 500 on checkout",
            "rename Basket to Cart",
            "explain the tax rules",
            "speed up the product page",
        ]
        gens = [make_generation(now_ms() + i, "composer", t) for i, t in enumerate(texts)]
        ws.db.append_generations(gens)
        wait(lambda: len(json.loads(cli("traces", "--json").stdout)) == len(gens), "traces")
        unseen = make_generation(now_ms(), "composer", "generated while Python was off")
        sent = [extension_event(h, g) for g in gens[:3]]
        sent.append(extension_event(h, gens[3], description="rename Basket → Cart"))
        sent.append(extension_event(h, unseen))
        broken = extension_event(h, gens[4])
        broken["payload"] = '{"trace_type": "generation", "generation_id": '
        for fields in [*sent, broken]:
            client.xadd("telemetry:events", fields, maxlen=10000)
        wait(lambda: client.xlen("telemetry:dead_letter") == 1, "the dead letter")
        wait(lambda: len(json.loads(cli("traces", "--json").stdout)) == len(gens) + 1, "stored")
        time.sleep(2.5)  # the status file is written every 2 s
        print("$ blueplane compare --since 1h")
        r = cli("compare", "--since", "1h")
        print(r.stdout + f"(exit code {r.returncode})\n")
        print("$ blueplane compare --since 1h --json")
        r = cli("compare", "--since", "1h", "--json")
        print(r.stdout + f"(exit code {r.returncode})\n")
        status = json.loads(cli("status", "--json").stdout)
        print("$ blueplane status --json | jq '.workspaces[] | {workspace_hash, status, rollout}'")
        for w in status["workspaces"].values():
            print(
                json.dumps(
                    {k: w.get(k) for k in ("workspace_hash", "status", "rollout")},
                    ensure_ascii=False,
                )
            )
        cfg.write_text("feature_flags:\n  python_db_monitor_rollout_percent: 10\n")
        wait(
            lambda: (
                "not in rollout"
                in json.dumps(json.loads((home / "status.json").read_text())["workspaces"])
            ),
            "rollout 10 %",
            10,
        )
        status = json.loads(cli("status", "--json").stdout)
        print("\n# after setting python_db_monitor_rollout_percent: 10 (no restart)")
        for w in status["workspaces"].values():
            print(
                json.dumps(
                    {k: w.get(k) for k in ("workspace_hash", "status", "rollout")},
                    ensure_ascii=False,
                )
            )
        print("\n$ blueplane traces --json --limit 2 | jq '.[] | {generation_id, sources}'")
        for t in json.loads(cli("traces", "--json", "--limit", "100").stdout)[:2]:
            print(json.dumps({"generation_id": t["generation_id"], "sources": t["sources"]}))
    finally:
        server.terminate()
        server.wait(10)
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
