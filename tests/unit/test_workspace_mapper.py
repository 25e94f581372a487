"""WorkspaceMapper against real folders, real workspace.json bytes and real SQLite files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import unicodedata
from pathlib import Path

import pytest

from blueplane.cursor import key_search
from blueplane.cursor import workspace_mapper as wm
from blueplane.cursor.workspace_mapper import WorkspaceMapper

DDL = "CREATE TABLE ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inode salt")


def h(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def make_db(path: Path, items: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute(DDL)
    conn.executemany("INSERT INTO ItemTable VALUES (?, ?)", list((items or {}).items()))
    conn.commit()
    conn.close()
    return path


def add_storage(
    user: Path,
    storage_id: str,
    *,
    key: str | None = "folder",
    uri: str | None = None,
    items: dict[str, str] | None = None,
    db: bool = True,
) -> Path:
    folder = user / "workspaceStorage" / storage_id
    folder.mkdir(parents=True, exist_ok=True)
    if key is not None and uri is not None:
        # Exactly what VS Code writes: JSON.stringify(meta, undefined, 2), no newline.
        (folder / "workspace.json").write_bytes(f'{{\n  "{key}": "{uri}"\n}}'.encode())
    if db:
        make_db(folder / "state.vscdb", items)
    return folder


def computed_id(folder: Path) -> str:
    return hashlib.md5(f"{folder}{os.stat(folder).st_ino}".encode()).hexdigest()


@pytest.fixture
def user(tmp_path: Path) -> Path:
    u = tmp_path / "Cursor" / "User"
    (u / "workspaceStorage").mkdir(parents=True)
    return u


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "workspace_db_cache.json"


def mapper(user: Path, cache: Path, platform: str = "linux") -> WorkspaceMapper:
    return WorkspaceMapper([user], cache, 1.0, platform=platform, cache_save_interval_s=0)


@linux_only
def test_computed_id_confirmed_by_workspace_json(tmp_path, user, cache):
    proj = tmp_path / "proj"
    proj.mkdir()
    sid = computed_id(proj)
    add_storage(user, sid, uri=f"file://{proj}")
    add_storage(user, "0" * 32, uri=f"file://{tmp_path}/elsewhere")
    m = mapper(user, cache).find_database_sync(h(str(proj)), str(proj))
    assert m is not None
    assert (m.strategy, m.storage_id, m.database) == (
        "computed_id",
        sid,
        user / "workspaceStorage" / sid / "state.vscdb",
    )


def test_workspace_json_scan_with_path_and_hash_only(user, cache):
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    add_storage(user, "b" * 32, uri="file:///home/x/other")
    mp = mapper(user, cache)
    m = mp.find_database_sync(h("/home/x/proj"), "/home/x/proj/")
    assert m is not None and (m.strategy, m.storage_id) == ("workspace_json", "a" * 32)
    mp2 = mapper(user, cache.with_name("other.json"))
    m2 = mp2.find_database_sync(h("/home/x/other"), None)
    assert m2 is not None and m2.storage_id == "b" * 32


def test_remote_hash_is_of_the_remote_path(user, cache):
    add_storage(user, "c" * 32, uri="vscode-remote://ssh-remote%2Bbox/home/me/proj")
    [folder] = mapper(user, cache).discover()
    assert folder.kind == "folder" and folder.local_path is None
    assert folder.workspace_hash == h("/home/me/proj")
    m = mapper(user, cache).find_database_sync(h("/home/me/proj"), "/home/me/proj")
    assert m is not None and m.storage_id == "c" * 32


def test_windows_uris(user, cache):
    add_storage(user, "d" * 32, uri="file:///c%3A/Users/Me/proj")
    mp = mapper(user, cache, platform="win32")
    [folder] = mp.discover()
    assert folder.local_path == "c:\\Users\\Me\\proj"
    assert folder.workspace_hash == h("c:\\Users\\Me\\proj")
    # the extension or a shell may spell the drive in upper case: hash-only lookup still maps
    assert mp.find_database_sync(h("C:\\Users\\Me\\proj"), None) is not None
    mp.invalidate(h("C:\\Users\\Me\\proj"))
    m = mp.find_database_sync("f" * 16, "C:\\users\\me\\PROJ\\")
    assert m is not None and m.storage_id == "d" * 32


def test_macos_case_and_unicode(user, cache):
    nfd = unicodedata.normalize("NFD", "/Users/Me/Caf\u00e9")
    add_storage(user, "e" * 32, uri="file://" + nfd.replace("/", "/"))
    mp = mapper(user, cache, platform="darwin")
    assert mp.find_database_sync("1" * 16, "/users/me/caf\u00e9") is not None
    assert (
        mapper(user, cache.with_name("x.json")).find_database_sync("1" * 16, "/users/me/caf\u00e9")
        is None
    )


def test_symlinked_project_matches(tmp_path, user, cache):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    add_storage(user, "f" * 32, uri=f"file://{tmp_path}/link")
    m = mapper(user, cache).find_database_sync(h(str(real)), str(real))
    assert m is not None and m.storage_id == "f" * 32


def test_multi_root_workspace(tmp_path, user, cache):
    cfg = tmp_path / "team.code-workspace"
    cfg.write_text('{\n  // comment\n  "folders": [{"path": "api"}, {"path": "/abs/web"},],\n}')
    add_storage(user, "9" * 32, key="workspace", uri=f"file://{cfg}")
    [folder] = mapper(user, cache).discover()
    assert folder.kind == "workspace"
    assert folder.workspace_hash == h(str(tmp_path / "api"))
    m = mapper(user, cache).find_database_sync(h("/abs/web"), "/abs/web")
    assert m is not None and m.storage_id == "9" * 32


def test_folder_name_fallback(user, cache):
    wh = h("/nowhere/proj")
    add_storage(user, f"{wh}deadbeefdeadbeef", key=None)
    m = mapper(user, cache).find_database_sync(wh, "/nowhere/proj")
    assert m is not None and m.strategy == "folder_name"


def test_key_search_uses_exact_keys_only(user, cache, monkeypatch):
    statements: list[str] = []
    real_cls = key_search.ReadOnlyDatabase

    class Traced(real_cls):  # type: ignore[misc,valid-type]
        def read_sync(self, fn):
            def traced(conn):
                conn.set_trace_callback(statements.append)
                return fn(conn)

            return super().read_sync(traced)

    monkeypatch.setattr(key_search, "ReadOnlyDatabase", Traced)
    add_storage(
        user,
        "1" * 32,
        key=None,
        items={
            "debug.selectedroot": "file:///home/k/proj/.vscode/launch.json",
            "cursorAuth/accessToken": "secret",
        },
    )
    add_storage(
        user,
        "2" * 32,
        key=None,
        items={
            "workbench.explorer.treeViewState": '{"focus":["file:///home/k/tree::file:///home/k/tree/a.py"],"selection":[]}',
        },
    )
    add_storage(
        user,
        "3" * 32,
        key=None,
        items={
            "history.entries": json.dumps(
                [{"editor": {"resource": f"file:///home/k/files/{n}.py"}} for n in range(3)]
            ),
        },
    )
    mp = mapper(user, cache)
    m1 = mp.find_database_sync(h("/home/k/proj"), "/home/k/proj")
    m2 = mp.find_database_sync(h("/home/k/tree"), None)
    m3 = mp.find_database_sync(h("/home/k/files"), "/home/k/files")
    assert [(m.strategy, m.storage_id) for m in (m1, m2, m3) if m] == [
        ("key_search", "1" * 32),
        ("key_search", "2" * 32),
        ("key_search", "3" * 32),
    ]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects and all("WHERE key = " in s for s in selects)
    assert not any("LIKE" in s.upper() or "cursorAuth" in s for s in statements)


def test_cache_persists_and_is_used(user, cache):
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    first = mapper(user, cache).find_database_sync(h("/home/x/proj"), "/home/x/proj")
    assert first is not None and first.strategy == "workspace_json"
    data = json.loads(cache.read_text())
    assert data["entries"][h("/home/x/proj")]["storage_id"] == "a" * 32
    assert not list(cache.parent.glob("*.tmp"))  # atomic write left no temp file
    again = mapper(user, cache).find_database_sync(h("/home/x/proj"), "/home/x/proj")
    assert again == wm.Mapping(h("/home/x/proj"), first.database, "a" * 32, user, "cache")
    assert mapper(user, cache).storage_ids_for(h("/home/x/proj")) == {"a" * 32}


def test_vanished_database_drops_cache_entry(user, cache, caplog):
    folder = add_storage(user, "a" * 32, uri="file:///home/x/proj")
    assert mapper(user, cache).find_database_sync(h("/home/x/proj"), "/home/x/proj")
    shutil.rmtree(folder)
    mp = mapper(user, cache)
    with caplog.at_level(logging.INFO, logger="blueplane.workspace_mapper"):
        assert mp.find_database_sync(h("/home/x/proj"), "/home/x/proj") is None
    assert "no longer exists" in caplog.text
    assert h("/home/x/proj") not in json.loads(cache.read_text())["entries"]


def test_recreated_storage_folder_invalidates(tmp_path, user, cache):
    folder = add_storage(user, "a" * 32, uri="file:///home/x/proj")
    assert mapper(user, cache).find_database_sync(h("/home/x/proj"), "/home/x/proj")
    old_ino = folder.stat().st_ino
    # Re-create while the old folder still exists, so it cannot get the same inode back.
    folder.rename(tmp_path / "old-storage")
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    shutil.rmtree(tmp_path / "old-storage")
    assert folder.stat().st_ino != old_ino
    m = mapper(user, cache).find_database_sync(h("/home/x/proj"), "/home/x/proj")
    assert m is not None and m.strategy == "workspace_json"


@linux_only
def test_recreated_project_folder_maps_to_new_storage(tmp_path, user, cache):
    proj = tmp_path / "proj"
    proj.mkdir()
    old = computed_id(proj)
    add_storage(user, old, uri=f"file://{proj}")
    assert mapper(user, cache).find_database_sync(h(str(proj)), str(proj)).storage_id == old
    proj.rename(tmp_path / "old-proj")  # re-created while the old one holds its inode
    proj.mkdir()
    (tmp_path / "old-proj").rmdir()
    new = computed_id(proj)
    assert new != old
    add_storage(user, new, uri=f"file://{proj}")
    mp = mapper(user, cache)
    m = mp.find_database_sync(h(str(proj)), str(proj))
    assert m is not None and (m.strategy, m.storage_id) == ("computed_id", new)
    assert mp.storage_ids_for(h(str(proj))) == {old, new}


def test_empty_windows_and_unknown_folders_listed(user, cache):
    add_storage(user, "1742529077861", key=None)
    add_storage(user, "a" * 32, key=None, db=False)
    bad = add_storage(user, "b" * 32, key=None)
    (bad / "workspace.json").write_bytes(b"{not json")
    by_id = {f.storage_id: f for f in mapper(user, cache).discover()}
    assert by_id["1742529077861"].kind == "empty"
    assert "empty window" in by_id["1742529077861"].problem
    assert (by_id["a" * 32].kind, by_id["a" * 32].problem) == ("unknown", "no workspace.json")
    assert "not valid JSON" in by_id["b" * 32].problem


def test_unmappable_logs_one_clear_line(user, cache, caplog):
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    mp = mapper(user, cache)
    with caplog.at_level(logging.WARNING, logger="blueplane.workspace_mapper"):
        assert mp.find_database_sync(h("/home/x/missing"), "/home/x/missing") is None
        assert mp.find_database_sync(h("/home/x/missing"), "/home/x/missing") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert h("/home/x/missing") in text and "/home/x/missing" in text
    assert "no workspace.json of 1 names this folder" in text
    assert h("/home/x/missing") in mp.problems


def test_invalidate_forgets(user, cache):
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    mp = mapper(user, cache)
    assert mp.find_database_sync(h("/home/x/proj"), "/home/x/proj")
    mp.invalidate(h("/home/x/proj"))
    assert mp.storage_ids_for(h("/home/x/proj")) == set()
    assert json.loads(cache.read_text())["entries"] == {}


def test_new_folder_seen_after_first_scan(user, cache):
    mp = mapper(user, cache)
    assert mp.find_database_sync(h("/home/x/late"), "/home/x/late") is None
    add_storage(user, "c" * 32, uri="file:///home/x/late")
    assert mp.find_database_sync(h("/home/x/late"), "/home/x/late") is not None


def test_old_cache_format_and_garbage_are_ignored(user, cache):
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({h("/p"): "/some/where/state.vscdb"}))
    assert mapper(user, cache).find_database_sync(h("/p"), "/p") is None
    cache.write_text("{garbage")
    assert mapper(user, cache).find_database_sync(h("/p"), "/p") is None


def test_global_databases(user, cache):
    make_db(user / "globalStorage" / "state.vscdb")
    make_db(user / "profiles" / "abc" / "globalStorage" / "state.vscdb")
    assert mapper(user, cache).global_databases() == [
        user / "globalStorage" / "state.vscdb",
        user / "profiles" / "abc" / "globalStorage" / "state.vscdb",
    ]


async def test_async_find_database(user, cache):
    add_storage(user, "a" * 32, uri="file:///home/x/proj")
    m = await mapper(user, cache).find_database(h("/home/x/proj"), "/home/x/proj")
    assert m is not None and m.storage_id == "a" * 32
