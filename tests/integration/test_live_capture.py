"""Live capture (issue 8): file events drive reads; the timed poll is only a safety net.

Every test here sets the safety poll (and the fallback poll, where events are expected) to an
hour: anything that arrives within the test's wait arrived because a file event caused a read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis as sync_redis

from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import (
    UserDir,
    make_user_bubble,
    make_workspace_identifier,
    snapshot_files,
)
from tests.integration.reliability_support import status_json, stream_trace_fields

pytestmark = pytest.mark.integration

HOUR = "3600"


def _slow_polls(env: BlueplaneEnv, **extra: str) -> BlueplaneEnv:
    env.extra.update(
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS=HOUR,
        BLUEPLANE_CURSOR_DATABASE_MONITOR__FALLBACK_POLL_SECONDS=HOUR,
    )
    env.extra.update(extra)
    return env


def _project(tmp: Path, name: str) -> str:
    folder = tmp / "projects" / name
    folder.mkdir(parents=True)
    return str(folder)


def _on_stream(client: sync_redis.Redis, trace_type: str) -> list[dict]:
    payloads = (json.loads(f["payload"]) for f in stream_trace_fields(client))
    return [p for p in payloads if p.get("trace_type") == trace_type]


def _detection(env: BlueplaneEnv, key: str) -> str | None:
    return status_json(env.home).get("workspaces", {}).get(key, {}).get("change_detection")


def _global_key(env: BlueplaneEnv) -> str | None:
    for key in status_json(env.home).get("workspaces", {}):
        if key.startswith("global:"):
            return key
    return None


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_file_events_bring_generations_and_bubbles_with_an_hour_long_safety_poll(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path, journal_mode: str
) -> None:
    env = _slow_polls(bp_env)
    ud = UserDir(env.cursor_dirs[0])
    ws = ud.add_workspace(_project(tmp_path, "p"), journal_mode=journal_mode)  # type: ignore[arg-type]
    glob = ud.global_db("wal" if journal_mode == "wal" else "delete")
    composer = glob.put_conversation(
        [make_user_bubble("first question")],
        workspaceIdentifier=make_workspace_identifier(ws.id, ws.folder_path or ""),
    )
    cid = composer["composerId"]
    sp = ServerProcess(env).start()
    try:
        env.cli("session", "start", "--workspace", str(ws.folder_path))
        # The session start reads everything once; from then on only events can bring news.
        wait_until(lambda: len(_on_stream(redis_client, "message")) == 1, what="initial sync")
        wait_until(
            lambda: (
                _detection(env, ws.workspace_hash) == "events"
                and (g := _global_key(env)) is not None
                and _detection(env, g) == "events"
            ),
            what="both databases watched by file events",
        )
        # The first sync of the global database reports its progress, finished.
        catch_up = status_json(env.home)["workspaces"][_global_key(env)]["catch_up"]
        assert catch_up["percent"] == 100.0 and catch_up["rows_done"] == catch_up["rows_total"]
        gen = ws.db.append_generations(1)[0]
        wait_until(
            lambda: any(
                p["generation_id"] == gen["generationUUID"]
                for p in _on_stream(redis_client, "generation")
            ),
            what="the new generation on the stream",
        )
        final = glob.stream_assistant_bubble(cid, "A streamed answer, complete.", steps=5)
        wait_until(
            lambda: any(
                p.get("item_id") == final["bubbleId"] for p in _on_stream(redis_client, "message")
            ),
            what="the streamed answer on the stream",
        )
        streamed = [
            p for p in _on_stream(redis_client, "message") if p.get("item_id") == final["bubbleId"]
        ]
        assert len(streamed) == 1 and streamed[0]["text"] == "A streamed answer, complete."
        wait_until(
            lambda: (
                {gen["generationUUID"], final["requestId"]}
                <= {t["generation_id"] for t in env.traces(trace_type=None)}
            ),
            what="both in the store",
        )
    finally:
        assert sp.stop() == 0


def test_a_burst_of_writes_costs_a_bounded_number_of_reads(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    env = _slow_polls(bp_env)
    ws = UserDir(env.cursor_dirs[0]).add_workspace(_project(tmp_path, "p"))
    sp = ServerProcess(env).start()
    try:
        env.cli("session", "start", "--workspace", str(ws.folder_path))
        wait_until(lambda: _detection(env, ws.workspace_hash) == "events", what="watched")
        before = status_json(env.home)["components"]["database_monitor"]["counters"]["reads"]
        ids = [g["generationUUID"] for _ in range(200) for g in ws.db.append_generations(1)]
        wait_until(
            lambda: (
                {p["generation_id"] for p in _on_stream(redis_client, "generation")}
                >= set(ids[-100:])
            ),  # Cursor's ring keeps the newest 100
            what="the burst captured",
        )
        wait_until(
            lambda: (
                status_json(env.home)["components"]["database_monitor"]["counters"]["reads"]
                > before
            ),
            what="status counters written",
        )
        reads = status_json(env.home)["components"]["database_monitor"]["counters"]["reads"]
        # 200 commits; a read per commit would be 200. Debouncing and one follow-up read per
        # in-flight read keep it far below that.
        assert reads - before <= 60, reads - before
        gens = [p["generation_id"] for p in _on_stream(redis_client, "generation")]
        assert len(gens) == len(set(gens))  # and nothing twice
    finally:
        assert sp.stop() == 0


def test_nothing_is_created_beside_cursors_files_with_the_watcher_running(
    bp_env: BlueplaneEnv, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    env = _slow_polls(bp_env)
    ud = UserDir(env.cursor_dirs[0])
    ws = ud.add_workspace(_project(tmp_path, "p"), journal_mode="wal")
    ws.db.append_generations(3)
    ws.db.close()
    before = snapshot_files(ws.dir)
    sp = ServerProcess(env).start()
    try:
        env.cli("session", "start", "--workspace", str(ws.folder_path))
        wait_until(lambda: len(_on_stream(redis_client, "generation")) == 3, what="sync")
        wait_until(lambda: _detection(env, ws.workspace_hash) == "events", what="watched")
    finally:
        assert sp.stop() == 0
    assert snapshot_files(ws.dir) == before
