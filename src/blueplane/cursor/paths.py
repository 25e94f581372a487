"""Where Cursor keeps its ``User`` folders (``globalStorage/``, ``workspaceStorage/``).

Defaults per platform: macOS ``~/Library/Application Support/Cursor/User``, Linux
``$XDG_CONFIG_HOME/Cursor/User`` (``~/.config`` when unset), Windows
``%APPDATA%\\Cursor\\User``; everywhere ``~/.cursor-server/data/User`` (the server side of
an SSH remote); on WSL also the Windows side, ``/mnt/c/Users/<u>/AppData/Roaming/Cursor/User``.

Profiles (decided from VS Code's source, ``userDataProfile.ts`` / ``storageMain.ts``): a
profile lives in ``User/profiles/<id>/`` and has its *own* ``globalStorage/state.vscdb``
(unless it was created sharing the default profile's state), but there is no per-profile
``workspaceStorage``: every profile's windows write to ``User/workspaceStorage``. So a
profile is not a separate user folder; ``global_databases`` lists its global database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .uris import is_case_insensitive_platform

APP_NAME = "Cursor"
_WSL_SKIP_USERS = {"public", "default", "default user", "all users"}


def read_proc_version() -> str:
    try:
        return Path("/proc/version").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def is_wsl(proc_version: str | None = None) -> bool:
    """WSL kernels say "microsoft" (WSL 2) or "Microsoft" (WSL 1) in ``/proc/version``."""
    text = read_proc_version() if proc_version is None else proc_version
    return "microsoft" in text.lower()


def default_user_dirs(
    platform: str = sys.platform,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    proc_version: str | None = None,
    windows_users_root: Path = Path("/mnt/c/Users"),
) -> list[Path]:
    """Candidate ``User`` folders for ``platform``; existence is not checked here."""
    home = Path.home() if home is None else home
    env = os.environ if env is None else env
    dirs: list[Path] = []
    if platform == "darwin":
        dirs.append(home / "Library" / "Application Support" / APP_NAME / "User")
    elif platform.startswith("win"):
        appdata = env.get("APPDATA")
        base = Path(appdata) if appdata else home / "AppData" / "Roaming"
        dirs.append(base / APP_NAME / "User")
    else:
        xdg = env.get("XDG_CONFIG_HOME")
        config = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".config"
        dirs.append(config / APP_NAME / "User")
    dirs.append(home / ".cursor-server" / "data" / "User")
    if platform.startswith("linux") and is_wsl(proc_version):
        try:
            users = sorted(windows_users_root.iterdir())
        except OSError:
            users = []
        for user in users:
            if user.name.lower() in _WSL_SKIP_USERS:
                continue
            dirs.append(user / "AppData" / "Roaming" / APP_NAME / "User")
    return dirs


def _looks_like_user_dir(path: Path) -> bool:
    return (path / "workspaceStorage").is_dir() or (path / "globalStorage").is_dir()


def _dedup_key(path: Path, platform: str) -> str:
    key = os.path.realpath(path)
    return key.casefold() if is_case_insensitive_platform(platform) else key


def resolve_user_dirs(
    configured: list[Path],
    *,
    platform: str = sys.platform,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    proc_version: str | None = None,
    windows_users_root: Path = Path("/mnt/c/Users"),
) -> list[Path]:
    """The ``User`` folders to scan: configured ones, else the platform defaults.

    A configured folder may be a ``--user-data-dir`` root (its ``User`` subfolder is
    used) or the ``User`` folder itself. Only existing folders are kept, each once.
    """
    if configured:
        candidates: list[Path] = []
        for raw in configured:
            p = Path(os.path.expanduser(str(raw)))
            if not _looks_like_user_dir(p) and (p / "User").is_dir():
                p = p / "User"
            candidates.append(p)
    else:
        candidates = default_user_dirs(
            platform, home, env, proc_version=proc_version, windows_users_root=windows_users_root
        )
    out: list[Path] = []
    seen: set[str] = set()
    for p in candidates:
        if not p.is_dir():
            continue
        key = _dedup_key(p, platform)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def profile_dirs(user_dir: Path) -> list[Path]:
    """``User/profiles/<id>/`` folders (VS Code profiles), sorted by name."""
    try:
        return sorted(p for p in (user_dir / "profiles").iterdir() if p.is_dir())
    except OSError:
        return []


def global_databases(user_dir: Path) -> list[Path]:
    """``globalStorage/state.vscdb`` of the default profile and of every other profile
    that has its own, existing ones only."""
    out: list[Path] = []
    for base in [user_dir, *profile_dirs(user_dir)]:
        db = base / "globalStorage" / "state.vscdb"
        if db.is_file():
            out.append(db)
    return out
