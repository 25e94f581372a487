"""WorkspaceMapper: from the extension's ``workspace_hash`` to Cursor's ``state.vscdb``.

The extension names a workspace ``sha256(path)[:16]``; Cursor names its storage folder
by VS Code's rule (``storage_id.py``) and writes the folder's URI in ``workspace.json``.
``find_database`` tries, in order, and stops at the first hit:

1. ``cache``: the persistent JSON cache. An entry is dropped when its database vanished,
   when its storage folder was re-created (other inode) or when the project folder was
   re-created (other salt, so Cursor now writes under another id).
2. ``computed_id``: VS Code's rule applied to the path stat-ed here; the folder found is
   confirmed against its ``workspace.json``.
3. ``workspace_json``: every ``workspace.json`` decoded and compared (normalised paths,
   or the hash of every spelling of the folder when no path was given).
4. ``folder_name``: the proposal's ``sha256(path)[:16]`` inside the folder name (fallback).
5. ``key_search``: for storage folders without ``workspace.json`` only, a few exact
   ``ItemTable`` keys that name the workspace root, compared in Python. Never a ``LIKE``
   scan, never a ``cursorAuth/*`` key.

Remote workspaces: the extension runs on the remote side, so its path is the remote path
(``/home/x`` of ``vscode-remote://ssh-remote+h/home/x``); ``WorkspaceFolder.workspace_hash``
hashes that path. Multi-root: the hash of the workspace's first folder when the
``.code-workspace`` file is readable here, else of the file's own path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import workspace_hash as hash_path
from . import storage_id as sid
from .paths import global_databases as _global_databases
from .sqlite_ro import CursorDbError, ReadOnlyDatabase
from .uris import ParsedUri, comparison_keys, parse_uri, strip_trailing_separator

logger = logging.getLogger("blueplane.workspace_mapper")

CACHE_VERSION = 1
_EMPTY_WINDOW_ID = re.compile(r"^\d{10,16}$")  # Date.now() (+ up to 1000) as text
_HASH16 = re.compile(r"^[0-9a-f]{16}$")
# Exact ItemTable keys that name the workspace root or files in it (key_search).
ROOT_KEYS = ("workbench.explorer.treeViewState", "debug.selectedroot")
FILE_KEYS = ("history.entries", "memento/workbench.editors.files.textFileEditor")
_KEY_VALUE_CAP = 1_000_000  # characters read of one value, at most
_MAX_KEY_SEARCH_FOLDERS = 200
_URI_IN_TEXT = re.compile(r"(?:file|vscode-remote)://[^\"\s\\]+")


@dataclass(frozen=True)
class WorkspaceFolder:
    """One ``workspaceStorage/<id>`` folder."""

    storage_id: str
    user_dir: Path
    folder: Path
    database: Path
    kind: str  # "folder" | "workspace" (multi-root) | "empty" | "unknown"
    uri: str | None
    local_path: str | None
    workspace_hash: str | None
    problem: str | None


@dataclass(frozen=True)
class Mapping:
    workspace_hash: str
    database: Path
    storage_id: str
    user_dir: Path
    strategy: str  # "computed_id" | "workspace_json" | "folder_name" | "key_search" | "cache"


@dataclass
class _Indexed:
    """A discovered folder plus what matching needs, kept between scans."""

    info: WorkspaceFolder
    inode: int
    keys: frozenset[str] = frozenset()
    hashes: frozenset[str] = frozenset()


@dataclass
class _StorageDir:
    mtime_ns: int = -1
    entries: dict[str, _Indexed] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _strip_jsonc(text: str) -> str:
    """``.code-workspace`` files are JSON with comments and trailing commas."""
    out: list[str] = []
    i, n, in_str = 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j == -1 else j
            continue
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j == -1 else j + 2
            continue
        else:
            out.append(c)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _code_workspace_folders(config: ParsedUri) -> list[str]:
    """Folder paths of a local ``.code-workspace`` file (best effort, small files only)."""
    if config.local_path is None:
        return []
    path = Path(config.local_path)
    try:
        if path.stat().st_size > 256_000:
            return []
        data = json.loads(_strip_jsonc(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []
    folders = data.get("folders") if isinstance(data, dict) else None
    out: list[str] = []
    for f in folders if isinstance(folders, list) else []:
        if not isinstance(f, dict):
            continue
        if isinstance(f.get("path"), str):
            p = f["path"]
            out.append(p if os.path.isabs(p) else os.path.normpath(path.parent / p))
        elif isinstance(f.get("uri"), str):
            u = parse_uri(f["uri"])
            out.append(u.editor_path())
    return out


def _spellings(path: str) -> set[str]:
    """Spellings of one folder the extension may have hashed."""
    base = strip_trailing_separator(path)
    out = {base, path}
    if re.match(r"^[a-zA-Z]:", base):  # c:\x (VS Code fsPath) and C:\x (Node, shells)
        out.add(base[0].upper() + base[1:])
        out.add(base[0].lower() + base[1:])
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


class WorkspaceMapper:
    """Maps a workspace hash (and path, when known) to its workspace ``state.vscdb``."""

    def __init__(
        self,
        user_dirs: list[Path],
        cache_path: Path,
        query_timeout_s: float = 1.5,
        *,
        platform: str = sys.platform,
        cache_save_interval_s: float = 1.0,
    ) -> None:
        self.user_dirs = list(user_dirs)
        self.cache_path = cache_path
        self.query_timeout_s = query_timeout_s
        self.platform = platform
        self.cache_save_interval_s = cache_save_interval_s
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._storage_ids: dict[str, set[str]] = {}
        self._dirty = False
        self._last_save = 0.0
        self._index: dict[Path, _StorageDir] = {}
        self._key_roots: dict[Path, tuple[tuple[int, int], set[str], set[str]]] = {}
        self._logged_unmapped: set[tuple[str, str]] = set()
        self.problems: dict[str, str] = {}  # hash -> why it could not be mapped
        self._load_cache()

    # ----------------------------------------------------------------- public API

    async def find_database(
        self, workspace_hash: str, workspace_path: str | None
    ) -> Mapping | None:
        """``find_database_sync`` in a worker thread: it stats, reads files and SQLite."""
        return await asyncio.to_thread(self.find_database_sync, workspace_hash, workspace_path)

    def find_database_sync(self, workspace_hash: str, workspace_path: str | None) -> Mapping | None:
        with self._lock:
            try:
                return self._find(workspace_hash, workspace_path)
            finally:
                self._maybe_save()

    def discover(self) -> list[WorkspaceFolder]:
        """Every storage folder of every user folder, sorted by user folder then id."""
        with self._lock:
            return [e.info for e in self._all_indexed()]

    def global_databases(self) -> list[Path]:
        """Global databases that exist: ``User/globalStorage`` and each profile's own."""
        out: list[Path] = []
        for ud in self.user_dirs:
            out.extend(_global_databases(ud))
        return out

    def storage_ids_for(self, workspace_hash: str) -> set[str]:
        """Every storage id mapped so far for the hash (older, re-created folders too)."""
        with self._lock:
            return set(self._storage_ids.get(workspace_hash, set()))

    def invalidate(self, workspace_hash: str) -> None:
        """Forget the hash's mapping (memory and disk); the next lookup maps afresh."""
        with self._lock:
            removed = self._entries.pop(workspace_hash, None) is not None
            removed = self._storage_ids.pop(workspace_hash, None) is not None or removed
            self._logged_unmapped = {k for k in self._logged_unmapped if k[0] != workspace_hash}
            if removed:
                self._dirty = True
                self.flush()

    def flush(self) -> None:
        """Write the cache now if anything changed (the server calls this on stop)."""
        with self._lock:
            if self._dirty:
                self._save_cache()

    # ----------------------------------------------------------------- the strategies

    def _find(self, h: str, workspace_path: str | None) -> Mapping | None:
        path = workspace_path.strip() if workspace_path else None
        if path and path.startswith("~"):
            path = os.path.expanduser(path)
        cached = self._from_cache(h, path)
        if cached is not None:
            return cached
        reasons: list[str] = []
        local_salts = sid.local_folder_salts(path, self.platform) if path else []

        found = self._by_computed_id(path, local_salts, reasons) if path else None
        strategy = "computed_id"
        if found is None:
            found, strategy = self._by_workspace_json(h, path, reasons), "workspace_json"
        if found is None:
            found, strategy = self._by_folder_name(h, reasons), "folder_name"
        if found is None:
            found, strategy = self._by_key_search(h, path, reasons), "key_search"
        if found is None:
            self._report_unmapped(h, path, reasons)
            return None
        self.problems.pop(h, None)
        return self._remember(h, found, strategy, path, local_salts)

    def _from_cache(self, h: str, path: str | None) -> Mapping | None:
        entry = self._entries.get(h)
        if entry is None:
            return None
        why = self._cache_entry_stale(entry, path)
        if why is not None:
            logger.info("workspace %s: cached mapping dropped: %s", h, why)
            del self._entries[h]
            self._dirty = True
            return None
        return Mapping(
            h, Path(entry["database"]), entry["storage_id"], Path(entry["user_dir"]), "cache"
        )

    def _cache_entry_stale(self, entry: dict[str, Any], path: str | None) -> str | None:
        db = Path(entry["database"])
        if not db.is_file():
            return f"{db} no longer exists"
        try:
            inode = db.parent.stat().st_ino
        except OSError as exc:
            return f"{db.parent} cannot be stat-ed: {exc.strerror}"
        if entry.get("folder_inode") not in (None, inode):
            return f"storage folder {db.parent} was re-created"
        salt = entry.get("salt", "absent")
        check_path = path or entry.get("workspace_path")
        if salt != "absent" and entry.get("strategy") == "computed_id" and check_path:
            salts = sid.local_folder_salts(check_path, self.platform)
            if salts and salt not in salts:
                return f"folder {check_path} was re-created (salt changed)"
        return None

    def _by_computed_id(
        self, path: str, salts: list[int | None], reasons: list[str]
    ) -> _Indexed | None:
        if not salts:
            reasons.append("computed id: path is not a folder on this machine")
            return None
        fs_path = sid.vscode_fs_path(path, self.platform)
        ids = sid.ids_for(sid.path_variants(fs_path, self.platform), salts)
        want = comparison_keys(path, self.platform)
        for ud in self.user_dirs:
            for storage_id in ids:
                folder = ud / "workspaceStorage" / storage_id
                if not folder.is_dir():
                    continue
                entry = self._read_folder(ud, folder)
                if entry is None:
                    continue
                if entry.info.kind == "folder" and not (entry.keys & want):
                    reasons.append(f"computed id {storage_id}: workspace.json names another folder")
                    continue
                if entry.info.kind not in ("folder", "unknown"):
                    continue
                return entry
        reasons.append(f"computed id {ids[0]} (and {len(ids) - 1} variants) not found")
        return None

    def _by_workspace_json(self, h: str, path: str | None, reasons: list[str]) -> _Indexed | None:
        want = comparison_keys(path, self.platform) if path else frozenset()
        hits = [
            e
            for e in self._all_indexed()
            if e.info.kind in ("folder", "workspace")
            and (h in e.hashes or (want and e.keys & want))
        ]
        if not hits:
            n = sum(1 for e in self._all_indexed() if e.info.kind in ("folder", "workspace"))
            reasons.append(f"no workspace.json of {n} names this folder")
            return None
        # A single folder beats a multi-root workspace holding it; then the latest used.
        hits.sort(
            key=lambda e: (
                e.info.kind == "folder",
                e.info.database.is_file(),
                _mtime_ns(e.info.database),
            ),
            reverse=True,
        )
        for e in hits:
            self._storage_ids.setdefault(h, set()).add(e.info.storage_id)
        return hits[0]

    def _by_folder_name(self, h: str, reasons: list[str]) -> _Indexed | None:
        if not _HASH16.match(h):
            return None
        for e in self._all_indexed():
            if h in e.info.storage_id.lower() and e.info.database.is_file():
                return e
        reasons.append("hash not in any folder name")
        return None

    def _by_key_search(self, h: str, path: str | None, reasons: list[str]) -> _Indexed | None:
        want = comparison_keys(path, self.platform) if path else frozenset()
        unknown = [
            e for e in self._all_indexed() if e.info.kind == "unknown" and e.info.database.is_file()
        ]
        if not unknown:
            return None
        unknown.sort(key=lambda e: _mtime_ns(e.info.database), reverse=True)
        best: tuple[float, _Indexed] | None = None
        for e in unknown[:_MAX_KEY_SEARCH_FOLDERS]:
            roots, files = self._roots_from_keys(e.info.database)
            for root in roots:
                if h in {hash_path(s) for s in _spellings(root)} or (
                    want and comparison_keys(root, self.platform) & want
                ):
                    return e
            if want and files:
                prefixes = tuple(k.rstrip("/") + "/" for k in want)
                inside = sum(
                    1
                    for f in files
                    if any(k.startswith(prefixes) for k in comparison_keys(f, self.platform))
                )
                score = inside / len(files)
                if score > 0.5 and (best is None or score > best[0]):
                    best = (score, e)
        if best is not None:
            return best[1]
        reasons.append(
            f"no ItemTable root key of {len(unknown)} folders without workspace.json names it"
        )
        return None

    def _roots_from_keys(self, db_path: Path) -> tuple[set[str], set[str]]:
        """Workspace roots and open files named by a few exact keys (memoised per file)."""
        try:
            st = db_path.stat()
        except OSError:
            return set(), set()
        stamp = (st.st_size, st.st_mtime_ns)
        memo = self._key_roots.get(db_path)
        if memo is not None and memo[0] == stamp:
            return memo[1], memo[2]

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for key in (*ROOT_KEYS, *FILE_KEYS):
                row = conn.execute(
                    "SELECT substr(value, 1, ?) FROM ItemTable WHERE key = ?", (_KEY_VALUE_CAP, key)
                ).fetchone()
                if row and row[0] is not None:
                    v = row[0]
                    out[key] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            return out

        try:
            values = ReadOnlyDatabase(db_path, self.query_timeout_s).read_sync(read)
        except CursorDbError as exc:
            logger.debug("key search skipped %s: %s", db_path, exc)
            return set(), set()
        roots: set[str] = set()
        files: set[str] = set()
        tree = values.get("workbench.explorer.treeViewState")
        for uri in _URI_IN_TEXT.findall(tree or ""):
            if "::" in uri:
                roots.add(parse_uri(uri.split("::", 1)[0], self.platform).editor_path())
        debug_root = (values.get("debug.selectedroot") or "").strip().strip('"')
        if debug_root.endswith("/.vscode/launch.json"):
            roots.add(
                parse_uri(debug_root[: -len("/.vscode/launch.json")], self.platform).editor_path()
            )
        for key in FILE_KEYS:
            for uri in _URI_IN_TEXT.findall(values.get(key) or ""):
                files.add(parse_uri(uri, self.platform).editor_path())
        self._key_roots[db_path] = (stamp, roots, files)
        return roots, files

    # ----------------------------------------------------------------- remembering

    def _remember(
        self, h: str, e: _Indexed, strategy: str, path: str | None, salts: list[int | None]
    ) -> Mapping:
        info = e.info
        salt: int | str | None = "absent"
        if strategy == "computed_id" and path:
            fs_path = sid.vscode_fs_path(path, self.platform)
            for s in salts:
                if info.storage_id in sid.ids_for(sid.path_variants(fs_path, self.platform), [s]):
                    salt = s
                    break
        entry: dict[str, Any] = {
            "database": str(info.database),
            "storage_id": info.storage_id,
            "user_dir": str(info.user_dir),
            "strategy": strategy,
            "folder_inode": e.inode,
            "workspace_path": path,
            "mapped_at_ms": _now_ms(),
        }
        if salt != "absent":
            entry["salt"] = salt
        self._entries[h] = entry
        self._storage_ids.setdefault(h, set()).add(info.storage_id)
        self._dirty = True
        self._logged_unmapped = {k for k in self._logged_unmapped if k[0] != h}
        return Mapping(h, info.database, info.storage_id, info.user_dir, strategy)

    def _report_unmapped(self, h: str, path: str | None, reasons: list[str]) -> None:
        if not self.user_dirs:
            reasons = ["no Cursor User folder found (set BLUEPLANE_CURSOR_DIRS)"]
        why = "; ".join(reasons) or "no strategy applied"
        self.problems[h] = why
        key = (h, why)
        level = logging.DEBUG if key in self._logged_unmapped else logging.WARNING
        self._logged_unmapped.add(key)
        logger.log(
            level,
            "workspace %s (path %s) has no Cursor database: %s",
            h,
            path if path else "unknown",
            why,
        )

    # ----------------------------------------------------------------- discovery

    def _all_indexed(self) -> list[_Indexed]:
        out: list[_Indexed] = []
        for ud in self.user_dirs:
            out.extend(self._index_user_dir(ud))
        return out

    def _index_user_dir(self, ud: Path) -> list[_Indexed]:
        base = ud / "workspaceStorage"
        state = self._index.setdefault(base, _StorageDir())
        try:
            mtime = base.stat().st_mtime_ns
        except OSError:
            state.entries.clear()
            state.mtime_ns = -1
            return []
        if mtime != state.mtime_ns:
            try:
                names = sorted(p.name for p in os.scandir(base) if p.is_dir())
            except OSError as exc:
                logger.warning("cannot list %s: %s", base, exc.strerror)
                return []
            old = state.entries
            state.entries = {}
            for name in names:
                prev = old.get(name)
                entry = self._read_folder(ud, base / name, prev)
                if entry is not None:
                    state.entries[name] = entry
            state.mtime_ns = mtime
        else:
            # workspace.json may land just after its folder: re-read those still missing it.
            for name, e in list(state.entries.items()):
                if e.info.kind == "unknown":
                    fresh = self._read_folder(ud, base / name)
                    if fresh is not None:
                        state.entries[name] = fresh
        return list(state.entries.values())

    def _read_folder(self, ud: Path, folder: Path, prev: _Indexed | None = None) -> _Indexed | None:
        try:
            inode = folder.stat().st_ino
        except OSError:
            return None
        if prev is not None and prev.inode == inode and prev.info.kind != "unknown":
            return prev  # workspace.json is written once: a known folder does not change
        name = folder.name
        db = folder / "state.vscdb"

        def unmapped(kind: str, problem: str, uri: str | None = None) -> _Indexed:
            return _Indexed(
                WorkspaceFolder(name, ud, folder, db, kind, uri, None, None, problem), inode
            )

        try:
            raw = (folder / "workspace.json").read_bytes()
        except FileNotFoundError:
            if _EMPTY_WINDOW_ID.match(name):
                return unmapped("empty", "empty window: no folder was open")
            return unmapped("unknown", "no workspace.json")
        except OSError as exc:
            return unmapped("unknown", f"workspace.json cannot be read: {exc.strerror}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return unmapped("unknown", f"workspace.json is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return unmapped("unknown", "workspace.json is not a JSON object")
        kind = (
            "folder"
            if isinstance(data.get("folder"), str)
            else ("workspace" if isinstance(data.get("workspace"), str) else None)
        )
        if kind is None:
            return unmapped("unknown", "workspace.json has neither 'folder' nor 'workspace'")
        uri_text: str = data[kind]
        parsed = parse_uri(uri_text, self.platform)
        paths: list[str] = []
        if kind == "folder":
            paths.append(parsed.editor_path())
        else:
            paths.extend(_code_workspace_folders(parsed))
            paths.append(parsed.editor_path())
        paths.extend(parsed.alternative_paths())
        hashes: set[str] = set()
        keys: set[str] = set()
        for p in paths:
            hashes.update(hash_path(s) for s in _spellings(p))
            keys.update(comparison_keys(p, self.platform))
        info = WorkspaceFolder(
            storage_id=name,
            user_dir=ud,
            folder=folder,
            database=db,
            kind=kind,
            uri=uri_text,
            local_path=parsed.local_path,
            workspace_hash=hash_path(paths[0]),
            problem=None,
        )
        return _Indexed(info, inode, frozenset(keys), frozenset(hashes))

    # ----------------------------------------------------------------- cache file

    def _load_cache(self) -> None:
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            logger.warning(
                "workspace cache %s unreadable, starting empty: %s", self.cache_path, exc
            )
            return
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            # The proposal's {hash: path} file may hold wrong (hash-in-name) mappings.
            logger.info("workspace cache %s has an old format; mapping afresh", self.cache_path)
            return
        entries = data.get("entries")
        for h, e in entries.items() if isinstance(entries, dict) else []:
            if isinstance(e, dict) and all(
                isinstance(e.get(k), str) for k in ("database", "storage_id", "user_dir")
            ):
                self._entries[h] = e
        ids = data.get("storage_ids")
        for h, lst in ids.items() if isinstance(ids, dict) else []:
            if isinstance(lst, list):
                self._storage_ids[h] = {x for x in lst if isinstance(x, str)}

    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.cache_save_interval_s:
            self._save_cache()

    def _save_cache(self) -> None:
        data = {
            "version": CACHE_VERSION,
            "entries": self._entries,
            "storage_ids": {h: sorted(v) for h, v in self._storage_ids.items()},
        }
        tmp: str | None = None
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=self.cache_path.name + ".", suffix=".tmp", dir=self.cache_path.parent
            )
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_path)
            tmp = None
            self._dirty = False
            self._last_save = time.monotonic()
        except OSError as exc:
            logger.warning("cannot write workspace cache %s: %s", self.cache_path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
