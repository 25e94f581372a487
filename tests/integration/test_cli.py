"""The commands as people and scripts use them: ``workspaces``, ``traces``, ``status``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BlueplaneEnv, wait_until
from tests.fixtures.cursor_db import UserDir, make_generation, snapshot_files

pytestmark = pytest.mark.integration


def test_workspaces_lists_every_storage_folder(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    ud = UserDir(bp_env.cursor_dirs[0])
    folder = tmp_path / "projects" / "alpha"
    folder.mkdir(parents=True)
    alpha = ud.add_workspace(str(folder), journal_mode="wal")
    alpha.db.append_generations(1)
    alpha.db.close()
    empty = ud.add_workspace(None)  # an empty window: no workspace.json
    junk = ud.add_workspace(str(tmp_path / "projects" / "junk"), with_db=False)
    junk.db_path.write_bytes(b"not sqlite" * 50)
    before = snapshot_files(ud.path)
    server()
    bp_env.cli("session", "start", "--workspace", str(folder))

    def listed() -> dict | None:
        data = bp_env.cli_json("workspaces")
        rows = {r["storage_id"]: r for r in data["workspaces"]}
        return rows if rows.get(alpha.id, {}).get("session_active") else None

    rows = wait_until(listed, what="alpha listed with its session active")
    a = rows[alpha.id]
    assert a["kind"] == "folder" and a["path"] == str(folder)
    assert a["workspace_hash"] == alpha.workspace_hash
    assert a["database_bytes"] > 0 and a["last_activity"]
    assert a["layout"].startswith("itemtable_generations")
    assert a["problem"] is None
    e = rows[empty.id]
    assert e["kind"] == "empty" and e["problem"] and not e["session_active"]
    assert rows[junk.id]["layout"].startswith("not_a_database")
    wait_until(lambda: bp_env.traces(), what="alpha's generation")
    # Listing read every database, the monitor read alpha's: not a byte changed, no -wal/-shm.
    assert snapshot_files(ud.path) == before


def test_traces_filters_and_json_shape(bp_env: BlueplaneEnv, server, tmp_path: Path) -> None:
    ud = UserDir(bp_env.cursor_dirs[0])
    spaces = []
    for name in ("one", "two"):
        folder = tmp_path / "projects" / name
        folder.mkdir(parents=True)
        ws = ud.add_workspace(str(folder))
        ws.db.append_generations([make_generation(text=f"{name} {i}") for i in range(3)])
        spaces.append(ws)
    server()
    for ws in spaces:
        bp_env.cli("session", "start", "--workspace", ws.folder_path)
    wait_until(lambda: len(bp_env.traces()) == 6, what="six generations")
    one = bp_env.traces("--workspace", spaces[0].workspace_hash)
    assert {t["workspace_hash"] for t in one} == {spaces[0].workspace_hash} and len(one) == 3
    by_path = bp_env.traces("--workspace", spaces[1].folder_path)
    assert {t["workspace_hash"] for t in by_path} == {spaces[1].workspace_hash}
    newest = bp_env.cli_json("traces", "--limit", "2", "--type", "generation")
    assert len(newest) == 2
    assert bp_env.traces("--since", "2099-01-01T00:00:00Z") == []
    assert len(bp_env.traces("--since", "1h")) == 6
    keys = {
        "event_id", "stream_id", "timestamp", "timestamp_ms", "received_at_ms", "session_id",
        "workspace_hash", "trace_type", "generation_id", "revision", "payload", "metadata",
        "sources",
    }  # fmt: skip
    assert set(newest[0]) == keys and newest[0]["sources"] == ["python_monitor"]
    human = bp_env.cli("traces", "--limit", "3").stdout
    assert "generation" in human and "two 2" in human
    bad = bp_env.cli("traces", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "30m, 2h, 1d" in bad.stderr


def test_status_json_shape(bp_env: BlueplaneEnv, server) -> None:
    server()
    status = json.loads(bp_env.cli("status", "--json").stdout)
    assert status["running"] is True
    assert status["stream"]["reachable"] is True
    for key in (
        "stream_length",
        "dead_letter_length",
        "pending",
        "consumer_lag",
        "active_sessions",
    ):
        assert key in status["stream"], key
    assert {"database_monitor", "fast_path_consumer", "session_monitor"} <= set(
        status["components"]
    )
