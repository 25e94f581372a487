"""The name VS Code (and so Cursor) gives a ``workspaceStorage/<id>`` folder, computed.

Source: ``src/vs/platform/workspaces/node/workspaces.ts`` in microsoft/vscode, marked
"DO NOT CHANGE. IDENTIFIERS HAVE TO REMAIN STABLE":

- single local folder (``getSingleFolderWorkspaceIdentifier``)::

      md5(folderUri.fsPath + (salt ? String(salt) : ''))

  salt = ``stat.ino`` on Linux (its birthtime is really ctime), ``stat.birthtime.getTime()``
  on macOS, ``Math.floor(stat.birthtimeMs)`` on Windows. Node builds ``stat.birthtime``
  as ``new Date(Math.round(birthtimeMs))`` (older Node: ``new Date(ms + 0.5)``, the same
  thing), so macOS *rounds* the milliseconds while Windows *floors* them. A salt of 0 adds
  nothing. ``fsPath`` lower-cases a Windows drive letter and uses ``\\`` there.
- remote folder: ``md5(folderUri.toString())`` (no salt, no lower-casing of the path).
- multi-root (``getWorkspaceIdentifier``): ``md5(originalFSPath(configPath))`` for a local
  ``.code-workspace`` file, ``md5(configPath.toString())`` for a remote one, the string
  lower-cased everywhere but Linux. No salt.
- empty window: ``String(Date.now() + Math.round(Math.random() * 1000))`` - not computable.

Everything here is a pure function of (path, platform, salt) except ``local_folder_ids``,
which stats a real folder on this machine.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import unicodedata
from collections.abc import Iterable

from .uris import ParsedUri, file_uri, parse_uri

LINUX, MACOS, WINDOWS = "linux", "darwin", "win32"


def md5_hex(text: str) -> str:
    """Node's ``createHash('md5').update(string)`` hashes the UTF-8 bytes."""
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def js_number_string(value: int) -> str:
    """``String(n)`` in JavaScript for a non-negative integer held in a double.

    Above 2**53 a JS number is rounded and printed with its shortest digits padded with
    zeros (``String(2**60) == '1152921504606847000'``); inode numbers can be that large.
    """
    if value < 2**53:
        return str(value)
    mantissa, _, exponent = repr(float(value)).partition("e")
    digits = mantissa.replace(".", "").lstrip("0") or "0"
    point = mantissa.find(".") if "." in mantissa else len(mantissa)
    n = point + int(exponent or 0)  # position of the decimal point
    if n >= 22:  # JS switches to exponent notation at 1e21
        return repr(float(value))
    return digits + "0" * (n - len(digits)) if n >= len(digits) else digits[:n]


def folder_id(fs_path: str, salt: int | None) -> str:
    """Storage id of a local single-folder workspace from its ``fsPath`` and salt."""
    return md5_hex(fs_path + (js_number_string(salt) if salt else ""))


def remote_folder_id(uri: str | ParsedUri) -> str:
    """Storage id of a remote folder: MD5 of ``URI.toString()``.

    A raw string is re-parsed and re-formatted first, so ``ssh-remote+Host`` and
    ``ssh-remote%2Bhost`` give the id VS Code would give.
    """
    parsed = parse_uri(uri) if isinstance(uri, str) else uri
    return md5_hex(parsed.to_string())


def multi_root_id(config: str | ParsedUri, platform: str) -> str:
    """Storage id of a multi-root workspace from its ``.code-workspace`` URI (or path)."""
    parsed = parse_uri(config, platform) if isinstance(config, str) else config
    if parsed.scheme == "file":
        text = parsed.fs_path(keep_drive_letter_casing=True)  # originalFSPath
    else:
        text = parsed.to_string()
    if platform != LINUX:
        text = text.lower()  # JS toLowerCase
    return md5_hex(text)


def vscode_fs_path(path: str, platform: str) -> str:
    """``URI.file(path).fsPath`` on ``platform``: what VS Code hashes for a folder it opened."""
    return file_uri(path, platform).fs_path()


# --------------------------------------------------------------------------- salts


def birthtime_ms(sec: int, nsec: int) -> float:
    """Node's ``birthtimeMs`` (``sec * 1e3 + nsec / 1e6`` in a double)."""
    return sec * 1e3 + nsec / 1e6


def salt_for(platform: str, *, ino: int, birthtime_ms: float | None) -> int | None:
    """The salt VS Code adds on ``platform``; ``None`` where it adds none."""
    if platform == LINUX:
        value: int | None = ino
    elif platform == MACOS:
        value = None if birthtime_ms is None else math.floor(birthtime_ms + 0.5)  # Math.round
    elif platform == WINDOWS:
        value = None if birthtime_ms is None else math.floor(birthtime_ms)
    else:
        value = None
    return value or None


def salt_candidates(platform: str, *, ino: int, birthtime_ms: float | None) -> list[int | None]:
    """Salts worth trying, most likely first, ending with "no salt".

    The primary one is ``salt_for``; on macOS the floored value is tried too (a
    ``birthtime`` read from float seconds may lose the last microsecond), and the unsalted
    id covers salt 0 and builds that added none.
    """
    out: list[int | None] = [salt_for(platform, ino=ino, birthtime_ms=birthtime_ms)]
    if platform == MACOS and birthtime_ms is not None:
        out.append(math.floor(birthtime_ms) or None)
    out.append(None)
    seen: list[int | None] = []
    for s in out:
        if s not in seen:
            seen.append(s)
    return seen


def stat_birthtime_ms(st: os.stat_result, platform: str) -> float | None:
    """Birth time in ms from a Python stat, the way Node computes ``birthtimeMs``."""
    ns = getattr(st, "st_birthtime_ns", None)
    if ns is not None:
        return birthtime_ms(ns // 1_000_000_000, ns % 1_000_000_000)
    bt = getattr(st, "st_birthtime", None)
    if bt is not None:
        return float(bt) * 1e3
    if platform == WINDOWS:  # before Python 3.12 st_ctime is the creation time on Windows
        return birthtime_ms(st.st_ctime_ns // 1_000_000_000, st.st_ctime_ns % 1_000_000_000)
    return None


def path_variants(path: str, platform: str) -> list[str]:
    """Byte-different spellings VS Code may have hashed: as given, NFC and NFD (macOS)."""
    out = [path]
    if platform == MACOS:
        for form in ("NFC", "NFD"):
            v = unicodedata.normalize(form, path)
            if v not in out:
                out.append(v)
    return out


def ids_for(fs_paths: Iterable[str], salts: Iterable[int | None]) -> list[str]:
    salts = list(salts)
    out: list[str] = []
    for p in fs_paths:
        for s in salts:
            i = folder_id(p, s)
            if i not in out:
                out.append(i)
    return out


def local_folder_salts(path: str, platform: str = sys.platform) -> list[int | None]:
    """Stat ``path`` here and return ``salt_candidates``; ``[]`` when it is not a folder."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return []
    if not os.path.isdir(path):
        return []
    return salt_candidates(platform, ino=st.st_ino, birthtime_ms=stat_birthtime_ms(st, platform))


def local_folder_ids(path: str, platform: str = sys.platform) -> list[str]:
    """Candidate storage ids of a folder on this machine, most likely first."""
    salts = local_folder_salts(path, platform)
    if not salts:
        return []
    fs_path = vscode_fs_path(path, platform)
    return ids_for(path_variants(fs_path, platform), salts)


def storage_id_for_local_folder(path: str, platform: str = sys.platform) -> str | None:
    """The id VS Code gives ``path`` opened on this machine, or ``None`` if it is no folder."""
    ids = local_folder_ids(path, platform)
    return ids[0] if ids else None
