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

The pieces live beside it: ``workspace_index`` (the folders and what their
``workspace.json`` names), ``key_search`` (strategy 5's reads), ``mapping_cache`` (the
cache file) and ``jsonc`` (the ``.code-workspace`` reader).

Remote workspaces: the extension runs on the remote side, so its path is the remote path
(``/home/x`` of ``vscode-remote://ssh-remote+h/home/x``); ``WorkspaceFolder.workspace_hash``
hashes that path. Multi-root: the hash of the workspace's first folder when the
``.code-workspace`` file is readable here, else of the file's own path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events import workspace_hash as hash_path
from . import storage_id as sid
from .key_search import FILE_KEYS, ROOT_KEYS, KeySearch
from .mapping_cache import CACHE_VERSION, MappingCache
from .paths import global_databases as _global_databases
from .uris import comparison_keys
from .workspace_index import Indexed, WorkspaceFolder, WorkspaceIndex, mtime_ns, spellings

__all__ = [
    "CACHE_VERSION", "FILE_KEYS", "ROOT_KEYS", "Mapping", "WorkspaceFolder", "WorkspaceMapper",
]  # fmt: skip

logger = logging.getLogger("blueplane.workspace_mapper")

_HASH16 = re.compile(r"^[0-9a-f]{16}$")
_MAX_KEY_SEARCH_FOLDERS = 200


@dataclass(frozen=True)
class Mapping:
    workspace_hash: str
    database: Path
    storage_id: str
    user_dir: Path
    strategy: str  # "computed_id" | "workspace_json" | "folder_name" | "key_search" | "cache"


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
        self._cache = MappingCache(cache_path, cache_save_interval_s)
        self._entries = self._cache.entries
        self._storage_ids = self._cache.storage_ids
        self._index = WorkspaceIndex(self.user_dirs, platform)
        self._keys = KeySearch(query_timeout_s, platform)
        self._logged_unmapped: set[tuple[str, str]] = set()
        self.problems: dict[str, str] = {}  # hash -> why it could not be mapped
        self._cache.load()

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
                self._cache.maybe_save()

    def discover(self) -> list[WorkspaceFolder]:
        """Every storage folder of every user folder, sorted by user folder then id."""
        with self._lock:
            return [e.info for e in self._index.all()]

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
                self._cache.dirty = True
                self.flush()

    def flush(self) -> None:
        """Write the cache now if anything changed (the server calls this on stop)."""
        with self._lock:
            if self._cache.dirty:
                self._cache.save()

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
            self._cache.dirty = True
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
    ) -> Indexed | None:
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
                entry = self._index.read_folder(ud, folder)
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

    def _by_workspace_json(self, h: str, path: str | None, reasons: list[str]) -> Indexed | None:
        want = comparison_keys(path, self.platform) if path else frozenset()
        hits = [
            e
            for e in self._index.all()
            if e.info.kind in ("folder", "workspace")
            and (h in e.hashes or (want and e.keys & want))
        ]
        if not hits:
            n = sum(1 for e in self._index.all() if e.info.kind in ("folder", "workspace"))
            reasons.append(f"no workspace.json of {n} names this folder")
            return None
        # A single folder beats a multi-root workspace holding it; then the latest used.
        hits.sort(
            key=lambda e: (
                e.info.kind == "folder",
                e.info.database.is_file(),
                mtime_ns(e.info.database),
            ),
            reverse=True,
        )
        for e in hits:
            self._storage_ids.setdefault(h, set()).add(e.info.storage_id)
        return hits[0]

    def _by_folder_name(self, h: str, reasons: list[str]) -> Indexed | None:
        if not _HASH16.match(h):
            return None
        for e in self._index.all():
            if h in e.info.storage_id.lower() and e.info.database.is_file():
                return e
        reasons.append("hash not in any folder name")
        return None

    def _by_key_search(self, h: str, path: str | None, reasons: list[str]) -> Indexed | None:
        want = comparison_keys(path, self.platform) if path else frozenset()
        unknown = [
            e for e in self._index.all() if e.info.kind == "unknown" and e.info.database.is_file()
        ]
        if not unknown:
            return None
        unknown.sort(key=lambda e: mtime_ns(e.info.database), reverse=True)
        best: tuple[float, Indexed] | None = None
        for e in unknown[:_MAX_KEY_SEARCH_FOLDERS]:
            roots, files = self._keys.roots_and_files(e.info.database)
            for root in roots:
                if h in {hash_path(s) for s in spellings(root)} or (
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

    # ----------------------------------------------------------------- remembering

    def _remember(
        self, h: str, e: Indexed, strategy: str, path: str | None, salts: list[int | None]
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
        self._cache.dirty = True
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
