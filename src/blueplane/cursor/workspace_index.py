"""The folder index: every ``workspaceStorage/<id>`` folder and what its ``workspace.json`` names.

A user folder's ``workspaceStorage`` is listed again only when its mtime changed; a folder
already known keeps its entry (``workspace.json`` is written once), and a folder still
without ``workspace.json`` is re-read on each scan, since the file may land just after it.
Each entry carries the comparison keys (normalised paths) and the extension's hashes of
every spelling of the folder(s) it names, so matching is a set lookup.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..events import workspace_hash as hash_path
from .jsonc import loads_jsonc
from .uris import ParsedUri, comparison_keys, parse_uri, strip_trailing_separator

logger = logging.getLogger("blueplane.workspace_mapper")

_EMPTY_WINDOW_ID = re.compile(r"^\d{10,16}$")  # Date.now() (+ up to 1000) as text
_CODE_WORKSPACE_MAX_BYTES = 256_000


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


@dataclass
class Indexed:
    """A discovered folder plus what matching needs, kept between scans."""

    info: WorkspaceFolder
    inode: int
    keys: frozenset[str] = frozenset()
    hashes: frozenset[str] = frozenset()


@dataclass
class _StorageDir:
    mtime_ns: int = -1
    entries: dict[str, Indexed] = field(default_factory=dict)


def code_workspace_folders(config: ParsedUri) -> list[str]:
    """Folder paths of a local ``.code-workspace`` file (best effort, small files only)."""
    if config.local_path is None:
        return []
    path = Path(config.local_path)
    try:
        if path.stat().st_size > _CODE_WORKSPACE_MAX_BYTES:
            return []
        data = loads_jsonc(path.read_text(encoding="utf-8"))
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


def spellings(path: str) -> set[str]:
    """Spellings of one folder the extension may have hashed."""
    base = strip_trailing_separator(path)
    out = {base, path}
    if re.match(r"^[a-zA-Z]:", base):  # c:\x (VS Code fsPath) and C:\x (Node, shells)
        out.add(base[0].upper() + base[1:])
        out.add(base[0].lower() + base[1:])
    return out


def mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class WorkspaceIndex:
    """The storage folders of some Cursor user folders, re-scanned only where they changed.

    Not thread-safe on its own: the mapper calls it under its lock.
    """

    def __init__(self, user_dirs: list[Path], platform: str) -> None:
        self.user_dirs = user_dirs
        self.platform = platform
        self._index: dict[Path, _StorageDir] = {}

    def all(self) -> list[Indexed]:
        """Every folder of every user folder, by user folder then storage id."""
        out: list[Indexed] = []
        for ud in self.user_dirs:
            out.extend(self._index_user_dir(ud))
        return out

    def _index_user_dir(self, ud: Path) -> list[Indexed]:
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
                entry = self.read_folder(ud, base / name, prev)
                if entry is not None:
                    state.entries[name] = entry
            state.mtime_ns = mtime
        else:
            # workspace.json may land just after its folder: re-read those still missing it.
            for name, e in list(state.entries.items()):
                if e.info.kind == "unknown":
                    fresh = self.read_folder(ud, base / name)
                    if fresh is not None:
                        state.entries[name] = fresh
        return list(state.entries.values())

    def read_folder(self, ud: Path, folder: Path, prev: Indexed | None = None) -> Indexed | None:
        """One storage folder as an index entry (None: it vanished)."""
        try:
            inode = folder.stat().st_ino
        except OSError:
            return None
        if prev is not None and prev.inode == inode and prev.info.kind != "unknown":
            return prev  # workspace.json is written once: a known folder does not change
        name = folder.name
        db = folder / "state.vscdb"

        def unmapped(kind: str, problem: str, uri: str | None = None) -> Indexed:
            return Indexed(
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
            paths.extend(code_workspace_folders(parsed))
            paths.append(parsed.editor_path())
        paths.extend(parsed.alternative_paths())
        hashes: set[str] = set()
        keys: set[str] = set()
        for p in paths:
            hashes.update(hash_path(s) for s in spellings(p))
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
        return Indexed(info, inode, frozenset(keys), frozenset(hashes))
