"""The product's spine, end to end: ``blueplane run`` against a real Redis and real SQLite files.

Cursor's side is played by ``tests.fixtures.cursor_db``: real databases with Cursor's DDL,
written one transaction per batch with a REPLACE of the whole array, in both journal modes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane.broker import BundledRedis
from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import (
    GENERATIONS_KEY,
    UserDir,
    make_generation,
    make_prompt,
    snapshot_files,
)
from tests.integration.reliability_support import free_port, wait_for_polls_after_now

pytestmark = pytest.mark.integration


def _user_dir(env: BlueplaneEnv) -> UserDir:
    return UserDir(env.cursor_dirs[0])


def _project(tmp: Path, name: str) -> str:
    folder = tmp / "projects" / name
    folder.mkdir(parents=True)
    return str(folder)


def _stream_traces(client: sync_redis.Redis, trace_type: str = "generation") -> list[dict]:
    out = []
    for _id, fields in client.xrange("telemetry:events"):
        if fields.get("event_type") != "database_trace":
            continue
        payload = json.loads(fields["payload"])
        if payload.get("trace_type") == trace_type:
            out.append({**fields, "payload": payload, "metadata": json.loads(fields["metadata"])})
    return out


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_generation_appended_while_running_arrives_once(
    bp_env: BlueplaneEnv, server, redis_client: sync_redis.Redis, tmp_path: Path, journal_mode: str
) -> None:
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "demo")
    ws = ud.add_workspace(folder, journal_mode=journal_mode)
    early = ws.db.append_generations(
        [make_generation(text="explain the parser"), make_generation(type="apply", text="a.py")]
    )
    ws.db.set_prompts([make_prompt(text=early[0]["textDescription"])])
    server()
    started = bp_env.cli("session", "start", "--workspace", folder, "--session-id", "s-1")
    assert "s-1" in started.stdout

    # Sync on session start: the two generations already there.
    wait_until(lambda: len(bp_env.traces()) == 2, what="initial sync of 2 generations")
    later = ws.db.append_generations([make_generation(text="now write the tests")])
    wait_until(lambda: len(bp_env.traces()) == 3, what="the appended generation in the store")

    ids = [t["generation_id"] for t in bp_env.traces()]
    expected = [g["generationUUID"] for g in early + later]
    assert sorted(ids) == sorted(expected)
    on_stream = _stream_traces(redis_client)
    assert Counter(t["payload"]["generation_id"] for t in on_stream) == Counter(expected)

    first = next(t for t in on_stream if t["payload"]["generation_id"] == expected[0])
    assert first["session_id"] == "s-1" and first["external_session_id"] == "s-1"
    assert first["hook_type"] == "DatabaseTrace" and first["platform"] == "cursor"
    assert first["metadata"]["source"] == "python_monitor"
    assert first["metadata"]["workspace_hash"] == ws.workspace_hash
    payload = first["payload"]
    assert payload["trace_type"] == "generation"
    assert payload["generation_type"] == early[0]["type"]
    assert payload["description"] == early[0]["textDescription"]
    assert payload["generation_timestamp_ms"] == early[0]["unixMs"]
    # The prompt matches the description exactly: paired; the others have no prompt.
    assert payload["prompt_text"] == early[0]["textDescription"]
    others = [t for t in on_stream if t["payload"]["generation_id"] != expected[0]]
    assert all("prompt_text" not in t["payload"] for t in others)


def test_workspace_without_session_produces_nothing(
    bp_env: BlueplaneEnv, server, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    ud = _user_dir(bp_env)
    quiet = ud.add_workspace(_project(tmp_path, "quiet"))
    quiet.db.append_generations(3)
    active_folder = _project(tmp_path, "active")
    active = ud.add_workspace(active_folder)
    active.db.append_generations(1)
    server()
    bp_env.cli("session", "start", "--workspace", active_folder)
    wait_until(lambda: len(bp_env.traces()) == 1, what="the active workspace's generation")
    quiet.db.append_generations(2)
    active.db.append_generations(1)
    wait_until(lambda: len(bp_env.traces()) == 2, what="the second active generation")
    hashes = {t["metadata"]["workspace_hash"] for t in _stream_traces(redis_client)}
    assert hashes == {active.workspace_hash}


def test_session_end_stops_monitoring(bp_env: BlueplaneEnv, server, tmp_path: Path) -> None:
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "p")
    ws = ud.add_workspace(folder)
    ws.db.append_generations(1)
    # A second, still active workspace: its polls prove the monitor kept polling meanwhile.
    witness_folder = _project(tmp_path, "witness")
    ud.add_workspace(witness_folder)
    sp: ServerProcess = server()
    bp_env.cli("session", "start", "--workspace", folder, "--session-id", "a")
    bp_env.cli("session", "start", "--workspace", witness_folder, "--session-id", "w")
    wait_until(lambda: len(bp_env.traces()) == 1, what="first generation")
    bp_env.cli("session", "end", "--workspace", folder)
    wait_until(lambda: "monitoring stopped" in sp.log(), what="monitoring to stop")
    ws.db.append_generations(2)
    # status.json is rewritten every 2 s: the workspace leaves it at the next write.
    wait_until(
        lambda: ws.workspace_hash not in bp_env.cli_json("status")["workspaces"],
        what="the ended workspace to leave status",
    )
    wait_for_polls_after_now(bp_env.home)  # the witness was polled after the write
    assert len(bp_env.traces()) == 1


def test_two_sessions_of_one_workspace_are_tracked_separately(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "shared")
    ws = ud.add_workspace(folder)
    server()
    bp_env.cli("session", "start", "--workspace", folder, "--session-id", "win-1")
    bp_env.cli("session", "start", "--workspace", folder, "--session-id", "win-2")
    bp_env.cli("session", "end", "--workspace", folder, "--session-id", "win-1")
    ws.db.append_generations(1)
    traces = wait_until(lambda: bp_env.traces(), what="a trace while win-2 is still open")
    assert [t["session_id"] for t in traces] == ["win-2"]


def test_bad_databases_are_reported_while_others_flow(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    ud = _user_dir(bp_env)
    good_folder, corrupt_folder, junk_folder = (
        _project(tmp_path, n) for n in ("good", "corrupt", "junk")
    )
    good = ud.add_workspace(good_folder)
    corrupt = ud.add_workspace(corrupt_folder)
    corrupt.db.write_raw(GENERATIONS_KEY, '[{"generationUUID": "x", "unixMs": 1')  # truncated
    junk = ud.add_workspace(junk_folder, with_db=False)
    junk.db_path.write_bytes(b"this is not a SQLite database at all" * 100)
    server()
    for f in (good_folder, corrupt_folder, junk_folder):
        bp_env.cli("session", "start", "--workspace", f)
    good.db.append_generations(1)
    wait_until(lambda: len(bp_env.traces()) == 1, what="the good workspace's generation")

    def reported() -> dict[str, dict[str, object]] | None:
        ws = bp_env.cli_json("status")["workspaces"]
        ok = (
            ws.get(corrupt.workspace_hash, {}).get("status") == "data_error"
            and ws.get(junk.workspace_hash, {}).get("status") == "not_a_database"
        )
        return ws if ok else None

    ws = wait_until(reported, what="both bad workspaces in status")
    assert "not valid JSON" in str(ws[corrupt.workspace_hash]["last_error"])
    assert "aiService.generations" in str(ws[corrupt.workspace_hash]["last_error"])
    # Cursor fixes its value: the workspace catches up.
    corrupt.db.set_generations([make_generation()])
    wait_until(lambda: len(bp_env.traces()) == 2, what="the repaired workspace to catch up")
    good.db.append_generations(1)
    wait_until(lambda: len(bp_env.traces()) == 3, what="the good workspace to keep flowing")


def test_cursor_files_are_byte_identical_after_a_run(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    ud = _user_dir(bp_env)
    folders = [_project(tmp_path, f"p{i}") for i in range(2)]
    for folder, mode in zip(folders, ("delete", "wal"), strict=True):
        ws = ud.add_workspace(folder, journal_mode=mode)
        ws.db.append_generations(3)
        ws.db.close()
    before = snapshot_files(ud.path)
    # Read the journal modes through the header, as opening them would create -wal/-shm.
    modes = {p: p.read_bytes()[18] for p in ud.workspace_storage.glob("*/state.vscdb")}
    assert sorted(modes.values()) == [1, 2]  # one rollback-journal, one WAL database
    sp = server()
    for folder in folders:
        bp_env.cli("session", "start", "--workspace", folder)
    wait_until(lambda: len(bp_env.traces()) == 6, what="all six generations")
    assert sp.stop() == 0
    assert snapshot_files(ud.path) == before
    for p, mode in modes.items():
        assert p.read_bytes()[18] == mode
        conn = sqlite3.connect(f"file:{p}?mode=ro&immutable=1", uri=True)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.close()


def test_real_2024_database_is_read_and_reported(
    bp_env: BlueplaneEnv, server, tmp_path: Path, real_fixture: Path
) -> None:
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "real")
    ws = ud.add_workspace(folder, with_db=False)
    shutil.copyfile(real_fixture, ws.db_path)  # a copy: the original is never touched
    before = snapshot_files(real_fixture.parent)
    server()
    bp_env.cli("session", "start", "--workspace", folder)

    def reported() -> dict[str, object] | None:
        w = bp_env.cli_json("status")["workspaces"].get(ws.workspace_hash)
        return w if w and w.get("status") in ("ok", "idle") else None

    w = wait_until(reported, what="the real database to be read without error")
    assert w["errors"] == 0
    assert "composer.composerData" in str(w["layout"])
    assert "aiService.prompts" in str(w["layout"])
    assert snapshot_files(real_fixture.parent) == before


def test_session_file_fallback_starts_and_ends_monitoring(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    # A slow rescan period: the file must be noticed through the folder watcher.
    bp_env.extra["BLUEPLANE_SESSION_MONITOR__SESSION_FILE_POLL_SECONDS"] = "60"
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "by-file")
    ws = ud.add_workspace(folder)
    ws.db.append_generations(1)
    sessions = bp_env.home / "cursor-session"
    sessions.mkdir(parents=True)
    sp = server()
    session_file = sessions / f"{ws.workspace_hash}.json"
    session_file.write_text(json.dumps({"CURSOR_SESSION_ID": "file-s", "workspace_path": folder}))
    traces = wait_until(bp_env.traces, timeout=10, what="a trace from the file-started session")
    assert [t["session_id"] for t in traces] == ["file-s"]
    session_file.unlink()
    wait_until(lambda: "monitoring stopped" in sp.log(), timeout=10, what="monitoring to stop")


def test_named_redis_down_at_start_is_reported_then_caught_up(
    bp_env: BlueplaneEnv, tmp_path: Path
) -> None:
    port = free_port()
    bp_env.redis_url = f"redis://127.0.0.1:{port}/0"
    ud = _user_dir(bp_env)
    folder = _project(tmp_path, "late-redis")
    ws = ud.add_workspace(folder)
    ws.db.append_generations(2)
    sp = ServerProcess(bp_env)
    sp.env.home.mkdir(parents=True, exist_ok=True)
    log = sp.log_path.open("ab")
    sp.proc = subprocess.Popen(
        [sys.executable, "-m", "blueplane.cli", "run"], env=bp_env.env(), stdout=log,
        stderr=subprocess.STDOUT, cwd=bp_env.home,
    )  # fmt: skip
    log.close()
    redis_server = BundledRedis(tmp_path / "late-redis-data", port=port)
    try:
        wait_until(lambda: f"Redis at redis://127.0.0.1:{port}/0 does not answer" in sp.log(),
                   what="one log line naming the URL")  # fmt: skip

        def unavailable() -> bool:
            comps = bp_env.cli_json("status")["components"]
            return comps.get("redis", {}).get("status") == "unavailable"

        wait_until(unavailable, what="status to show Redis unavailable")
        assert sp.proc.poll() is None  # still running, retrying
        assert sp.log().count("does not answer") == 1  # one line, not one per retry
        redis_server.start()
        wait_until(sp._running, timeout=40, what="the server to run once Redis answers")
        bp_env.cli("session", "start", "--workspace", folder)
        wait_until(lambda: len(bp_env.traces()) == 2, what="the workspace to be captured")
    finally:
        sp.stop()
        redis_server.stop()
