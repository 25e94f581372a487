"""Key search: the workspace a storage folder without ``workspace.json`` belongs to.

Reads a few exact ``ItemTable`` keys that name the workspace root (the explorer tree, the
debug root) or files in it (editor history), read-only and capped. Never a ``LIKE`` scan,
never a ``cursorAuth/*`` key. Results are memoised per database file (size, mtime).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

from .sqlite_ro import CursorDbError, ReadOnlyDatabase
from .uris import parse_uri

logger = logging.getLogger("blueplane.workspace_mapper")

# Exact ItemTable keys that name the workspace root or files in it.
ROOT_KEYS = ("workbench.explorer.treeViewState", "debug.selectedroot")
FILE_KEYS = ("history.entries", "memento/workbench.editors.files.textFileEditor")
_KEY_VALUE_CAP = 1_000_000  # characters read of one value, at most
_URI_IN_TEXT = re.compile(r"(?:file|vscode-remote)://[^\"\s\\]+")
_LAUNCH_JSON = "/.vscode/launch.json"


class KeySearch:
    """Workspace roots and open files a database's ItemTable names."""

    def __init__(self, query_timeout_s: float, platform: str) -> None:
        self.query_timeout_s = query_timeout_s
        self.platform = platform
        self._memo: dict[Path, tuple[tuple[int, int], set[str], set[str]]] = {}

    def roots_and_files(self, db_path: Path) -> tuple[set[str], set[str]]:
        """Workspace roots and open files named by a few exact keys (memoised per file)."""
        try:
            st = db_path.stat()
        except OSError:
            return set(), set()
        stamp = (st.st_size, st.st_mtime_ns)
        memo = self._memo.get(db_path)
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
        if debug_root.endswith(_LAUNCH_JSON):
            roots.add(parse_uri(debug_root[: -len(_LAUNCH_JSON)], self.platform).editor_path())
        for key in FILE_KEYS:
            for uri in _URI_IN_TEXT.findall(values.get(key) or ""):
                files.add(parse_uri(uri, self.platform).editor_path())
        self._memo[db_path] = (stamp, roots, files)
        return roots, files
