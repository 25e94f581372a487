"""VS Code's storage-id rule, table-driven for Linux, macOS and Windows.

Expected hex values were produced outside this code, with coreutils:
``printf '%s' '<string VS Code hashes>' | md5sum``. The string VS Code hashes is derived by
hand from ``workspaces.ts`` (``fsPath + String(salt)``; remote ``uri.toString()``; multi-root
``originalFSPath`` lower-cased except on Linux) and Node's stat (``birthtime`` =
``new Date(Math.round(birthtimeMs))`` on macOS, ``Math.floor(birthtimeMs)`` on Windows).
The first row is the vector given in cursor-format.md.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from blueplane.cursor import storage_id as sid

BIRTH_MS = 1700000000123.6  # .6: rounds up on macOS, floors on Windows


@pytest.mark.parametrize(
    ("platform", "path", "ino", "birth_ms", "expected"),
    [
        # md5("/home/alice/code/demo1234567"): Linux salts with the inode
        ("linux", "/home/alice/code/demo", 1234567, BIRTH_MS, "7ebf85e3b8dc960b89ff81385faba070"),
        # md5("/Users/alice/code/demo1700000000124"): macOS rounds birthtimeMs
        ("darwin", "/Users/alice/code/demo", 99, BIRTH_MS, "8ce7a3001ff5525458a0f2f6596f881c"),
        # md5("c:\\Users\\alice\\code\\demo1700000000123"): fsPath lower-cases the drive, floor
        ("win32", "C:\\Users\\alice\\code\\demo", 99, BIRTH_MS, "a5a5cba30b3e107086cea6ba30dc2386"),
        # md5("/home/alice/code/demo"): a salt of 0 adds nothing
        ("linux", "/home/alice/code/demo", 0, None, "607c17b3f9a8c213575aca40e37976cd"),
        # md5("/home/alice/code/demo1152921504606847000"): JS String() of a 2**60 inode
        ("linux", "/home/alice/code/demo", 2**60, None, "d6f8310374d785fb31f38034884b0fd9"),
    ],
)
def test_local_folder_id(platform, path, ino, birth_ms, expected):
    salt = sid.salt_for(platform, ino=ino, birthtime_ms=birth_ms)
    fs_path = sid.vscode_fs_path(path, platform)
    assert sid.folder_id(fs_path, salt) == expected


@pytest.mark.parametrize(
    ("platform", "birth_ms", "ino", "salt"),
    [
        ("linux", BIRTH_MS, 42, 42),
        ("darwin", BIRTH_MS, 42, 1700000000124),
        ("darwin", 1700000000123.4, 42, 1700000000123),
        ("win32", BIRTH_MS, 42, 1700000000123),
        ("win32", None, 42, None),
        ("linux", None, 0, None),
    ],
)
def test_salt_rules(platform, birth_ms, ino, salt):
    assert sid.salt_for(platform, ino=ino, birthtime_ms=birth_ms) == salt


def test_salt_candidates_end_with_unsalted_and_try_floor_on_macos():
    assert sid.salt_candidates("darwin", ino=1, birthtime_ms=BIRTH_MS) == [
        1700000000124,
        1700000000123,
        None,
    ]
    assert sid.salt_candidates("linux", ino=7, birthtime_ms=None) == [7, None]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # md5("vscode-remote://ssh-remote%2Bmyhost/home/alice/code/demo")
        (
            "vscode-remote://ssh-remote%2Bmyhost/home/alice/code/demo",
            "3ac0b54de05872d4da868d737dcb6f60",
        ),
        # toString() lower-cases the authority and escapes "+": same id as above
        (
            "vscode-remote://ssh-remote+MyHost/home/alice/code/demo",
            "3ac0b54de05872d4da868d737dcb6f60",
        ),
        # md5("vscode-remote://wsl%2Bubuntu/home/alice/code/demo")
        ("vscode-remote://wsl%2Bubuntu/home/alice/code/demo", "6e7b02d7ebf43c7868619fd2a8b258a9"),
    ],
)
def test_remote_folder_id(uri, expected):
    assert sid.remote_folder_id(uri) == expected


@pytest.mark.parametrize(
    ("platform", "config", "expected"),
    [
        # md5("/home/alice/demo.code-workspace"): Linux keeps case
        ("linux", "file:///home/alice/demo.code-workspace", "cab87b36573ccf35fed63eff1d475384"),
        # md5("/users/alice/demo.code-workspace"): lower-cased elsewhere
        ("darwin", "file:///Users/Alice/demo.code-workspace", "be2fca31b4d5f9904289d06833c12359"),
        # md5("c:\\users\\alice\\demo.code-workspace")
        (
            "win32",
            "file:///C%3A/Users/alice/demo.code-workspace",
            "5de2f7ac93cdf7a0ce393f24738911e9",
        ),
        # md5("vscode-remote://ssh-remote%2Bmyhost/home/alice/demo.code-workspace")
        (
            "linux",
            "vscode-remote://ssh-remote%2Bmyhost/home/alice/demo.code-workspace",
            "382515b2a4435483e6034b2c62386a3a",
        ),
    ],
)
def test_multi_root_id(platform, config, expected):
    assert sid.multi_root_id(config, platform) == expected


def test_js_number_string_matches_javascript():
    assert sid.js_number_string(12345) == "12345"
    assert sid.js_number_string(2**53 + 1) == "9007199254740992"  # JS: 9007199254740992
    assert sid.js_number_string(2**60) == "1152921504606847000"


def test_nfd_variant_offered_on_macos_only():
    nfc = "/Users/alice/caf\u00e9"
    assert len(sid.path_variants(nfc, "darwin")) == 2
    assert sid.path_variants(nfc, "linux") == [nfc]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inode salt is Linux's rule")
def test_storage_id_for_real_folder_uses_inode(tmp_path: Path):
    folder = tmp_path / "proj"
    folder.mkdir()
    ino = os.stat(folder).st_ino
    expected = hashlib.md5(f"{folder}{ino}".encode()).hexdigest()
    assert sid.storage_id_for_local_folder(str(folder)) == expected
    assert sid.storage_id_for_local_folder(str(tmp_path / "missing")) is None
    (tmp_path / "file").write_text("x")
    assert sid.storage_id_for_local_folder(str(tmp_path / "file")) is None
