"""The fixture builders produce what cursor-format.md describes (checked with plain sqlite3)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.cursor_db import (
    ACCESS_TOKEN_KEY,
    CHATDATA_KEY,
    COMPOSER_DATA_KEY,
    FAKE_ACCESS_TOKEN,
    GENERATIONS_KEY,
    OMIT,
    PROMPTS_KEY,
    CursorDb,
    file_uri,
    hold_lock,
    make_agent_blob,
    make_bubble,
    make_chatdata,
    make_composer_data_3x,
    make_composer_data_2024,
    make_composer_data_2025,
    make_generation,
    make_global_composer,
    make_user_bubble,
    make_user_dir,
    make_workspace_identifier,
    md5_hex,
    snapshot_files,
    vscode_remote_uri,
)

REPO = Path(__file__).resolve().parents[2]


def ro(path: Path) -> sqlite3.Connection:
    """A reader like the monitor's: read-only URI."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def schema(path: Path) -> dict[str, str]:
    with ro(path) as c:
        return dict(c.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_journal_mode_user_version_and_exact_ddl(tmp_path: Path, mode: str) -> None:
    db = CursorDb(
        tmp_path / "state.vscdb",
        journal_mode=mode,  # type: ignore[arg-type]
        tables=("ItemTable", "cursorDiskKV", "composerHeaders", "aiService.generations"),
    )
    db.put("k", {"a": 1})
    c = sqlite3.connect(tmp_path / "state.vscdb")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == mode
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    c.close()
    s = schema(tmp_path / "state.vscdb")
    assert s["ItemTable"] == (
        "CREATE TABLE ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)"
    )
    assert s["cursorDiskKV"] == (
        "CREATE TABLE cursorDiskKV (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)"
    )
    assert s["composerHeaders"].startswith(
        "CREATE TABLE composerHeaders (composerId TEXT PRIMARY KEY, workspaceId TEXT,"
    )
    assert s["aiService.generations"] == (
        'CREATE TABLE "aiService.generations" '
        "(uuid TEXT PRIMARY KEY, data_version INTEGER, value TEXT, timestamp INTEGER)"
    )
    assert (tmp_path / "state.vscdb-wal").exists() == (mode == "wal")
    db.close()
    assert not (tmp_path / "state.vscdb-journal").exists()


@pytest.mark.parametrize(("value_type", "sql_type"), [("text", "text"), ("blob", "blob")])
def test_value_types(tmp_path: Path, value_type: str, sql_type: str) -> None:
    db = CursorDb(tmp_path / "s.vscdb", value_type=value_type)  # type: ignore[arg-type]
    db.write_batch({"d": {"x": [1, 2]}, "s": "plain", "n": 5})
    db.write_batch({"b": b"\x00\xffraw"})
    with ro(tmp_path / "s.vscdb") as c:
        rows = dict(c.execute("SELECT key, typeof(value) FROM ItemTable"))
        assert rows == {"d": sql_type, "s": sql_type, "n": sql_type, "b": "blob"}
        raw = c.execute("SELECT value FROM ItemTable WHERE key='d'").fetchone()[0]
    assert json.loads(raw) == {"x": [1, 2]}
    assert (raw if isinstance(raw, str) else raw.decode()) == '{"x":[1,2]}'
    db.close()


def test_batch_deletes_none_and_replace_gives_higher_rowid(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb")
    db.write_batch({"a": "1", "b": "2", "c": "3"})
    first = db.rowid("a")
    db.write_batch({"a": "1b", "c": None})
    with ro(tmp_path / "s.vscdb") as c:
        rows = dict(c.execute("SELECT key, rowid FROM ItemTable"))
        assert set(rows) == {"a", "b"}
        assert rows["a"] > first
        assert rows["a"] > rows["b"]
        assert c.execute("SELECT value FROM ItemTable WHERE key='a'").fetchone()[0] == "1b"
    db.close()


def test_raw_values_stored_verbatim(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb")
    db.write_raw(GENERATIONS_KEY, '[{"unixMs": 1, "generationUUID": ')  # truncated JSON
    db.write_raw("null", None)
    db.write_raw("int", 42)
    db.write_raw("bytes", b"\x80\x81")
    with ro(tmp_path / "s.vscdb") as c:
        q = "SELECT key, typeof(value), value FROM ItemTable"
        rows = {k: (t, v) for k, t, v in c.execute(q)}
    assert rows[GENERATIONS_KEY] == ("text", '[{"unixMs": 1, "generationUUID": ')
    assert rows["null"] == ("null", None)
    assert rows["int"] == ("integer", 42)
    assert rows["bytes"] == ("blob", b"\x80\x81")
    # a malformed ring is started afresh by append_generations (like Cursor overwriting it)
    assert db.generations() == []
    db.close()


def test_generation_ring_cap_and_order(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb", generations_cap=5)
    first = db.append_generations(3)
    more = db.append_generations([make_generation(type="apply", text=None) for _ in range(4)])
    with ro(tmp_path / "s.vscdb") as c:
        arr = json.loads(
            c.execute("SELECT value FROM ItemTable WHERE key=?", (GENERATIONS_KEY,)).fetchone()[0]
        )
    ids = [g["generationUUID"] for g in arr]
    assert len(arr) == 5
    assert ids == [g["generationUUID"] for g in (first + more)[-5:]]
    assert set(arr[0]) == {"unixMs", "generationUUID", "type", "textDescription"}
    assert arr[-1]["type"] == "apply"
    assert "textDescription" not in arr[-1]
    assert isinstance(arr[0]["unixMs"], int)
    assert arr[0]["unixMs"] > 1_600_000_000_000  # milliseconds
    db.close()


def test_default_cap_is_100_and_prompts(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb")
    db.append_generations(120)
    assert len(db.generations()) == 100
    db.set_prompts([{"text": "a", "commandType": 2}])
    db.append_prompts(2)
    prompts = db.get_json(PROMPTS_KEY)
    assert [set(p) for p in prompts] == [{"text", "commandType"}] * 3
    db.close()


def test_workspace_json_exact_bytes_and_storage_ids(tmp_path: Path) -> None:
    user = make_user_dir(tmp_path)
    proj = tmp_path / "my proj"
    proj.mkdir()
    ws = user.add_workspace(str(proj))
    expected_uri = "file://" + str(proj).replace(" ", "%20")
    assert ws.workspace_json is not None
    assert ws.workspace_json.read_bytes() == (b'{\n  "folder": "' + expected_uri.encode() + b'"\n}')
    assert ws.id == md5_hex(str(proj) + str(os.stat(proj).st_ino))
    assert ws.dir == user.path / "workspaceStorage" / ws.id
    assert (ws.dir / "state.vscdb").exists()

    gone = user.add_workspace("/home/alice/code/demo")
    assert gone.id == hashlib.md5(b"/home/alice/code/demo").hexdigest()
    assert gone.workspace_json.read_bytes() == (b'{\n  "folder": "file:///home/alice/code/demo"\n}')

    win = user.add_workspace("C:\\Users\\me\\proj")
    assert json.loads(win.workspace_json.read_bytes()) == {"folder": "file:///c%3A/Users/me/proj"}

    multi = user.add_workspace(None, multi_root_file="/home/a/x.code-workspace")
    assert json.loads(multi.workspace_json.read_text()) == {
        "workspace": "file:///home/a/x.code-workspace"
    }
    remote = vscode_remote_uri("ssh-remote+host", "/srv/app")
    assert remote == "vscode-remote://ssh-remote%2Bhost/srv/app"
    r = user.add_workspace(None, remote_uri=remote)
    assert r.id == md5_hex(remote)

    empty = user.add_workspace(None)
    assert empty.id.isdigit() and len(empty.id) == 13
    assert not (empty.dir / "workspace.json").exists()
    assert (empty.dir / "state.vscdb").exists()

    fixed = user.add_workspace("/x", storage_id="abc", journal_mode="wal")
    assert fixed.dir.name == "abc"
    user.close()
    assert file_uri("/a b/c:d") == "file:///a%20b/c%3Ad"


def test_global_db_defaults_and_auth_token(tmp_path: Path) -> None:
    user = make_user_dir(tmp_path)
    g = user.global_db(composer_headers=True)
    assert user.global_db() is g
    path = user.path / "globalStorage" / "state.vscdb"
    with ro(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert set(schema(path)) == {"ItemTable", "cursorDiskKV", "composerHeaders"}
        token = c.execute("SELECT value FROM ItemTable WHERE key=?", (ACCESS_TOKEN_KEY,)).fetchone()
    assert token == (FAKE_ACCESS_TOKEN,)
    user.close()


def test_workspace_layouts(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb")
    d24 = make_composer_data_2024()
    assert d24["composerDataVersion"] == 0
    assert d24["allComposers"][0]["conversation"][0]["type"] == 1
    d25 = make_composer_data_2025()
    assert d25["allComposers"][0]["type"] == "head"
    assert d25["selectedComposerIds"] == d25["lastFocusedComposerIds"]
    d3 = make_composer_data_3x(["a"])
    assert d3 == {"selectedComposerIds": ["a"]}
    db.set_composer_data(d25)
    chat = make_chatdata()
    assert [b["type"] for b in chat["tabs"][0]["bubbles"]] == ["user", "ai"]
    assert chat["tabs"][0]["bubbles"][1]["requestId"]
    db.set_chatdata(chat)
    with ro(tmp_path / "s.vscdb") as c:
        keys = {k for (k,) in c.execute("SELECT key FROM ItemTable")}
    assert {COMPOSER_DATA_KEY, CHATDATA_KEY} <= keys
    db.close()


def test_global_layouts_and_omission(tmp_path: Path) -> None:
    db = CursorDb(
        tmp_path / "g.vscdb",
        journal_mode="wal",
        tables=("ItemTable", "cursorDiskKV", "composerHeaders"),
    )
    composer = db.put_conversation(
        workspaceIdentifier=make_workspace_identifier("wsid", "/p"), _v=OMIT
    )
    cid = composer["composerId"]
    assert "_v" not in composer
    assert [h["type"] for h in composer["fullConversationHeadersOnly"]] == [1, 2]
    inline = make_global_composer([make_user_bubble()], inline=True, _v=1)
    assert "conversation" in inline and "fullConversationHeadersOnly" not in inline
    db.put_composer_header(composerId=cid, workspaceId="wsid")
    key = db.put_agent_blob("assistant", "hi")
    assert key == make_agent_blob("assistant", "hi")[0]
    with ro(tmp_path / "g.vscdb") as c:
        keys = [k for (k,) in c.execute("SELECT key FROM cursorDiskKV ORDER BY key")]
        assert c.execute("SELECT workspaceId FROM composerHeaders").fetchone() == ("wsid",)
        blob = c.execute("SELECT value FROM cursorDiskKV WHERE key=?", (key,)).fetchone()[0]
    assert key == "agentKv:blob:" + hashlib.sha256(blob.encode()).hexdigest()
    assert json.loads(blob) == {"role": "assistant", "content": "hi"}
    assert f"composerData:{cid}" in keys
    assert sum(k.startswith(f"bubbleId:{cid}:") for k in keys) == 2

    for kind in (1, 2):
        for f in list(make_bubble(kind)):
            kw: dict[str, object] = {"type": kind, f: OMIT}
            assert f not in make_bubble(**kw)
            assert f not in make_bubble(kind, omit=[f])
    for f in list(make_generation()):
        assert f not in make_generation(**{f: OMIT}), f
    for f in list(make_global_composer()):
        assert f not in make_global_composer(**{f: OMIT}), f
    assert make_bubble(2, extraField=1)["extraField"] == 1
    assert make_bubble(1)["type"] == 1 and "requestId" not in make_bubble(1)
    db.close()


def test_stream_assistant_bubble(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "g.vscdb", tables=("ItemTable", "cursorDiskKV"))
    seen: list[tuple[int, str, int]] = []

    def on_write(i: int, bubble: dict) -> None:
        with ro(tmp_path / "g.vscdb") as c:
            k = f"bubbleId:c1:{bubble['bubbleId']}"
            row = c.execute("SELECT rowid, value FROM cursorDiskKV WHERE key=?", (k,)).fetchone()
        v = json.loads(row[1])
        seen.append((row[0], v["text"], v["tokenCount"]["outputTokens"]))

    final = db.stream_assistant_bubble("c1", "abcdefgh", steps=4, requestId="r1", on_write=on_write)
    assert [t for _, t, _ in seen] == ["ab", "abcd", "abcdef", "abcdefgh"]
    assert [o for _, _, o in seen] == [0, 0, 0, 85]
    assert [r for r, _, _ in seen] == sorted({r for r, _, _ in seen})  # rowid grows
    assert final["requestId"] == "r1" and "clientEndTime" in final["timingInfo"]
    db.close()


def test_legacy_generations_table(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb", tables=("ItemTable", "aiService.generations"))
    uid = db.add_legacy_generation(timestamp_ms=1_742_530_949_974)
    with ro(tmp_path / "s.vscdb") as c:
        q = 'SELECT uuid, data_version, timestamp FROM "aiService.generations"'
        row = c.execute(q).fetchone()
    assert row == (uid, 1, 1_742_530_949_974)
    db.close()


def test_snapshot_files_detects_changes(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "s.vscdb")
    db.put("a", "1")
    before = snapshot_files(tmp_path)
    assert set(before) == {"s.vscdb"}
    assert snapshot_files(tmp_path) == before
    db.put("a", "2")
    assert snapshot_files(tmp_path) != before
    db.close()


@pytest.mark.parametrize(("kind", "mode"), [("exclusive", "delete"), ("reserved", "wal")])
def test_hold_lock_blocks_writers(tmp_path: Path, kind: str, mode: str) -> None:
    db = CursorDb(tmp_path / "s.vscdb", journal_mode=mode, persistent=False)  # type: ignore[arg-type]
    db.put("a", "1")
    w = sqlite3.connect(tmp_path / "s.vscdb", timeout=0.05)
    with hold_lock(tmp_path / "s.vscdb", kind=kind) as lock:  # type: ignore[arg-type]
        assert lock.acquired.is_set()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            w.execute("INSERT INTO ItemTable VALUES ('b', '2')")
            w.commit()
        w.rollback()
    assert lock.released.is_set()
    db.put("b", "2")
    w.close()
    # a timed lock releases by itself
    lock = hold_lock(tmp_path / "s.vscdb", seconds=0.05).start()
    assert lock.released.wait(2.0)


def test_cursor_writer_importable(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import cursor_writer
    finally:
        sys.path.remove(str(REPO / "bench"))
    ids = tmp_path / "ids.txt"
    report = cursor_writer.run_writer(
        tmp_path / "w.vscdb", interval_ms=1, duration_s=5, count=5, cap=3, ids_file=ids
    )
    assert report["commits"] == 5 and report["busy_errors"] == 0
    assert len(report["generation_ids_written"]) == 5
    assert ids.read_text().split() == report["generation_ids_written"]
    db = CursorDb(tmp_path / "w.vscdb")
    assert [g["generationUUID"] for g in db.generations()] == report["generation_ids_written"][-3:]
    db.close()


def test_cursor_writer_cli_counts_busy(tmp_path: Path) -> None:
    dbp = tmp_path / "w.vscdb"
    CursorDb(dbp, journal_mode="wal").close()
    out = tmp_path / "r.json"
    ids = tmp_path / "ids.txt"
    done = threading.Event()

    def hold() -> None:
        time.sleep(0.2)
        with hold_lock(dbp, seconds=1.3, kind="reserved") as lock:
            lock.released.wait(5)
        done.set()

    t = threading.Thread(target=hold)
    t.start()
    # the lock is taken by this process, the writer is a separate process
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cursor_writer.py"), str(dbp),
         "--interval-ms", "50", "--duration", "2", "--report", str(out), "--ids-file", str(ids)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    t.join()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["busy_errors"] >= 1
    assert report["commits"] >= 5
    assert ids.read_text().split() == report["generation_ids_written"]
    assert report["p50_ms"] is not None and report["max_ms"] >= report["p99_ms"]
