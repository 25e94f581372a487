"""The URIs Cursor writes in ``workspace.json``, parsed the way VS Code parses them.

Cursor is a VS Code fork, so ``workspace.json`` holds ``URI.toString()`` output and the
storage id of a remote folder is the MD5 of that exact string. This module replicates
enough of VS Code's ``vs/base/common/uri.ts`` (``URI.parse``, ``URI.file``, ``fsPath``,
``toString``) to decode every form seen in the wild and to re-encode it byte for byte:

- ``file:///home/x/proj``, ``file:///c%3A/Users/me/proj`` (fsPath ``c:\\Users\\me\\proj``: VS
  Code lowercases the drive letter), UNC ``file://server/share/x``,
  ``file://wsl.localhost/Ubuntu/home/x`` and ``file://wsl$/Ubuntu/home/x``;
- ``vscode-remote://ssh-remote%2Bhost/path``, ``vscode-remote://wsl%2Bubuntu/home/x``,
  ``vscode-remote://dev-container%2B<hex json>/workspaces/x`` (and any other remote kind).

Comparison keys (``comparison_keys``) say whether two spellings name the same folder:
case-insensitive on macOS and Windows, Unicode NFC (macOS may hand out NFD), symlinks
resolved when the path exists on this machine, no trailing separator, ``~`` expanded.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

# VS Code's parser regex (uri.ts `_regexp`), kept verbatim so edge cases match.
_URI_RE = re.compile(r"^(([^:/?#]+?):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?")
_SCHEME_RE = re.compile(r"^[A-Za-z][\w+.-]*$")
_ENCODED_RUN = re.compile(r"(%[0-9A-Za-z][0-9A-Za-z])+")
_DRIVE_PATH = re.compile(r"^/?[A-Za-z]:")
_WSL_UNC_HOSTS = ("wsl.localhost", "wsl$")

REMOTE_SCHEME = "vscode-remote"


def is_windows_platform(platform: str) -> bool:
    return platform.startswith("win") or platform == "cygwin"


def is_case_insensitive_platform(platform: str) -> bool:
    """macOS (APFS/HFS+ default) and Windows compare paths without case."""
    return platform == "darwin" or is_windows_platform(platform)


# --------------------------------------------------------------------------- decoding


def _decode_strict(run: str) -> str:
    data = bytes(int(run[i + 1 : i + 3], 16) for i in range(0, len(run), 3))
    return data.decode("utf-8")


def _decode_graceful(run: str) -> str:
    # decodeURIComponentGraceful: on a bad escape keep 3 characters and go on.
    try:
        return _decode_strict(run)
    except ValueError:  # bad hex digits or invalid UTF-8 (UnicodeDecodeError is a ValueError)
        if len(run) > 3:
            return run[:3] + _decode_graceful(run[3:])
        return run


def percent_decode(text: str) -> str:
    """VS Code's ``percentDecode``: decodes valid escapes, leaves broken ones as they are."""
    if "%" not in text:
        return text
    return _ENCODED_RUN.sub(lambda m: _decode_graceful(m.group(0)), text)


# --------------------------------------------------------------------------- encoding


def encode_component(text: str, *, is_path: bool = False, is_authority: bool = False) -> str:
    """VS Code's ``encodeURIComponentFast``: everything but ``A-Za-z0-9-._~`` is escaped
    (``/`` kept in paths; ``[``, ``]``, ``:`` kept in authorities), hex in upper case."""
    safe = ("/" if is_path else "") + ("[]:" if is_authority else "")
    return quote(text, safe=safe, errors="surrogatepass")


def format_uri(scheme: str, authority: str, path: str, query: str = "", fragment: str = "") -> str:
    """VS Code's ``URI.toString()`` (``_asFormatted``) from decoded components."""
    res = ""
    if scheme:
        res += scheme + ":"
    if authority or scheme == "file":
        res += "//"
    if authority:
        at = authority.find("@")
        if at != -1:
            userinfo, authority = authority[:at], authority[at + 1 :]
            colon = userinfo.rfind(":")
            if colon == -1:
                res += encode_component(userinfo)
            else:
                res += encode_component(userinfo[:colon]) + ":"
                res += encode_component(userinfo[colon + 1 :], is_authority=True)
            res += "@"
        authority = authority.lower()
        colon = authority.rfind(":")
        if colon == -1:
            res += encode_component(authority, is_authority=True)
        else:
            res += encode_component(authority[:colon], is_authority=True) + authority[colon:]
    if path:
        # Lower-case Windows drive letters in /C:/fff or C:/fff.
        if len(path) >= 3 and path[0] == "/" and path[2] == ":" and "A" <= path[1] <= "Z":
            path = "/" + path[1].lower() + ":" + path[3:]
        elif len(path) >= 2 and path[1] == ":" and "A" <= path[0] <= "Z":
            path = path[0].lower() + ":" + path[2:]
        res += encode_component(path, is_path=True)
    if query:
        res += "?" + encode_component(query)
    if fragment:
        res += "#" + encode_component(fragment)
    return res


# --------------------------------------------------------------------------- parsed form


@dataclass(frozen=True)
class ParsedUri:
    """One URI from ``workspace.json``, decoded.

    ``remote_kind`` is the part of a ``vscode-remote`` authority before ``+``
    (``ssh-remote``, ``wsl``, ``dev-container``, ``attached-container``, ``tunnel``…) and
    ``None`` for local files. ``local_path`` is VS Code's ``fsPath`` for ``file`` URIs
    (Windows semantics when ``windows``) and ``None`` for anything remote.
    """

    raw: str
    scheme: str
    authority: str
    path: str
    query: str = ""
    fragment: str = ""
    remote_kind: str | None = None
    remote_name: str | None = None
    local_path: str | None = None
    windows: bool = False

    @property
    def is_remote(self) -> bool:
        return self.scheme != "file"

    def to_string(self) -> str:
        """``URI.toString()``: the canonical text VS Code hashes for remote storage ids."""
        return format_uri(self.scheme, self.authority, self.path, self.query, self.fragment)

    def fs_path(
        self, *, windows: bool | None = None, keep_drive_letter_casing: bool = False
    ) -> str:
        """``uriToFsPath``: UNC for an authority, drive letter lower-cased, OS separators."""
        win = self.windows if windows is None else windows
        if self.authority and len(self.path) > 1 and self.scheme == "file":
            value = f"//{self.authority}{self.path}"
        elif (
            len(self.path) >= 3
            and self.path[0] == "/"
            and self.path[1].isascii()
            and (self.path[1].isalpha() and self.path[2] == ":")
        ):
            value = (
                self.path[1] if keep_drive_letter_casing else self.path[1].lower()
            ) + self.path[2:]
        else:
            value = self.path
        if win:
            value = value.replace("/", "\\")
        return value

    @property
    def remote_info(self) -> dict[str, Any] | None:
        """Newer remotes put hex-encoded JSON after ``+`` (``{"hostName": …}``,
        ``{"hostPath": …}`` for dev containers); decoded when it is, else ``None``."""
        name = self.remote_name
        if not name or len(name) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", name):
            return None
        try:
            data = json.loads(bytes.fromhex(name).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def alternative_paths(self) -> list[str]:
        """Other spellings the editor side may report for this folder.

        ``\\\\wsl.localhost\\Ubuntu\\home\\x`` is ``/home/x`` inside the distro; a dev
        container's ``hostPath`` is the local folder it was built from.
        """
        alts: list[str] = []
        if self.scheme == "file" and self.authority.lower() in _WSL_UNC_HOSTS:
            parts = self.path.split("/", 2)  # "", distro, rest
            if len(parts) == 3:
                alts.append("/" + parts[2])
        info = self.remote_info
        if info is not None:
            host_path = info.get("hostPath")
            if isinstance(host_path, str) and host_path:
                alts.append(host_path)
        return alts

    def editor_path(self) -> str:
        """The path the editor extension sees: ``fsPath`` locally, the URI path remotely
        (the extension runs on the remote side there), without trailing separator."""
        if self.local_path is not None:
            return strip_trailing_separator(self.local_path)
        return strip_trailing_separator(self.path) or "/"


def strip_trailing_separator(path: str) -> str:
    stripped = path.rstrip("/\\")
    if not stripped:
        return path[:1]
    if re.fullmatch(r"[A-Za-z]:", stripped):  # keep "c:\" a root
        return path[: len(stripped) + 1]
    return stripped


def _looks_like_uri(text: str) -> bool:
    m = re.match(r"^([^:/?#]+):", text)
    return bool(m and len(m.group(1)) > 1 and _SCHEME_RE.match(m.group(1)))


def _reference_resolution(scheme: str, path: str) -> str:
    if scheme in ("file", "http", "https"):
        if not path:
            return "/"
        if not path.startswith("/"):
            return "/" + path
    return path


def _finish(
    raw: str, scheme: str, authority: str, path: str, query: str, fragment: str, platform: str
) -> ParsedUri:
    remote_kind: str | None = None
    remote_name: str | None = None
    local_path: str | None = None
    windows = is_windows_platform(platform)
    if scheme == "file":
        # A drive letter or a UNC host was written by Windows, whatever reads it now.
        windows = windows or bool(_DRIVE_PATH.match(path)) or bool(authority)
    elif scheme == REMOTE_SCHEME:
        kind, plus, name = authority.partition("+")
        remote_kind = kind or None
        remote_name = name if plus else None
        windows = False
    parsed = ParsedUri(
        raw, scheme, authority, path, query, fragment, remote_kind, remote_name, None, windows
    )
    if scheme == "file":
        local_path = parsed.fs_path()
        parsed = ParsedUri(
            raw,
            scheme,
            authority,
            path,
            query,
            fragment,
            remote_kind,
            remote_name,
            local_path,
            windows,
        )
    return parsed


def file_uri(path: str, platform: str = sys.platform) -> ParsedUri:
    """``URI.file(path)``: a local path as the URI VS Code makes of it."""
    authority = ""
    windows = is_windows_platform(platform) or bool(re.match(r"^[A-Za-z]:[\\/]?", path))
    if path.startswith("~"):
        path = os.path.expanduser(path)
    if windows:
        path = path.replace("\\", "/")
    if path.startswith("//"):
        idx = path.find("/", 2)
        if idx == -1:
            authority, path = path[2:], "/"
        else:
            authority, path = path[2:idx], path[idx:] or "/"
    path = _reference_resolution("file", path)
    return _finish(
        format_uri("file", authority, path),
        "file",
        authority,
        path,
        "",
        "",
        "win32" if windows else platform,
    )


def parse_uri(text: str, platform: str = sys.platform) -> ParsedUri:
    """``URI.parse`` for URIs; a bare path (``/x``, ``C:\\x``, ``~/x``) is taken as ``URI.file``."""
    text = text.strip()
    if not _looks_like_uri(text):
        return file_uri(text, platform)
    m = _URI_RE.match(text)
    assert m is not None  # the regex matches every string
    scheme = m.group(2) or ""
    authority = percent_decode(m.group(4) or "")
    path = _reference_resolution(scheme, percent_decode(m.group(5) or ""))
    query = percent_decode(m.group(7) or "")
    fragment = percent_decode(m.group(9) or "")
    return _finish(text, scheme, authority, path, query, fragment, platform)


# --------------------------------------------------------------------------- comparison


def comparison_key(path: str, platform: str = sys.platform, *, resolve: bool = True) -> str:
    """One spelling of a folder reduced to what identifies it on ``platform``."""
    p = path.strip()
    if p.startswith("~"):
        p = os.path.expanduser(p)
    windows_style = (
        bool(_DRIVE_PATH.match(p))
        or p.startswith("\\\\")
        or (is_windows_platform(platform) and "\\" in p)
    )
    if resolve and not windows_style and p.startswith("/") and not is_windows_platform(platform):
        try:
            if os.path.exists(p):
                p = os.path.realpath(p)
        except (OSError, ValueError):
            pass
    p = unicodedata.normalize("NFC", p)
    if windows_style:
        p = p.replace("\\", "/")
        if len(p) >= 3 and p[0] == "/" and p[2] == ":":  # "/c:/x" -> "c:/x"
            p = p[1:]
    p = strip_trailing_separator(p)
    if windows_style or is_case_insensitive_platform(platform):
        p = p.casefold()
    return p


def comparison_keys(path: str, platform: str = sys.platform) -> frozenset[str]:
    """Every key the same folder may have: itself, and on WSL its other side
    (``c:\\x`` is ``/mnt/c/x``; ``\\\\wsl.localhost\\D\\x`` is ``/x``)."""
    key = comparison_key(path, platform)
    keys = {key}
    m = re.match(r"^([a-z]):(/.*)?$", key)
    if m:
        keys.add(f"/mnt/{m.group(1)}{m.group(2) or ''}")
    m2 = re.match(r"^/mnt/([a-zA-Z])(/.*)?$", key)
    if m2:
        keys.add(f"{m2.group(1).lower()}:{m2.group(2) or '/'}".casefold())
    slashed = path.strip().replace("\\", "/")
    for host in _WSL_UNC_HOSTS:
        prefix = f"//{host}/"
        if slashed.casefold().startswith(prefix):
            # Inside the distro the path is case-sensitive: keep its case.
            rest = slashed[len(prefix) :].split("/", 1)
            inner = "/" + (rest[1] if len(rest) > 1 else "")
            keys.add(comparison_key(inner, "linux", resolve=False))
    return frozenset(keys)
