"""Every URI form seen in workspace.json, decoded like VS Code's uri.ts."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

from blueplane.cursor.uris import comparison_key, comparison_keys, parse_uri, percent_decode

DEV_HEX = "7b22686f737450617468223a222f686f6d652f782f70726f6a227d"  # {"hostPath":"/home/x/proj"}


@pytest.mark.parametrize(
    ("raw", "scheme", "authority", "kind", "path", "local", "canonical"),
    [
        ("file:///home/x/proj", "file", "", None, "/home/x/proj", "/home/x/proj", None),
        ("file:///home/x/proj/", "file", "", None, "/home/x/proj/", "/home/x/proj/", None),
        ("file:///home/x/my%20proj", "file", "", None, "/home/x/my proj", "/home/x/my proj", None),
        (
            "file:///home/x/caf%C3%A9",
            "file",
            "",
            None,
            "/home/x/caf\u00e9",
            "/home/x/caf\u00e9",
            None,
        ),
        (
            "file:///c%3A/Users/me/proj",
            "file",
            "",
            None,
            "/c:/Users/me/proj",
            "c:\\Users\\me\\proj",
            None,
        ),
        # upper-case drive: fsPath and toString() both lower-case it
        (
            "file:///C:/Users/me/proj",
            "file",
            "",
            None,
            "/C:/Users/me/proj",
            "c:\\Users\\me\\proj",
            "file:///c%3A/Users/me/proj",
        ),
        ("file://server/share/x", "file", "server", None, "/share/x", "\\\\server\\share\\x", None),
        (
            "file://wsl.localhost/Ubuntu/home/x",
            "file",
            "wsl.localhost",
            None,
            "/Ubuntu/home/x",
            "\\\\wsl.localhost\\Ubuntu\\home\\x",
            None,
        ),
        (
            "file://wsl%24/Ubuntu/home/x",
            "file",
            "wsl$",
            None,
            "/Ubuntu/home/x",
            "\\\\wsl$\\Ubuntu\\home\\x",
            None,
        ),
        (
            "vscode-remote://ssh-remote%2Bhost/path",
            "vscode-remote",
            "ssh-remote+host",
            "ssh-remote",
            "/path",
            None,
            None,
        ),
        (
            "vscode-remote://ssh-remote+My.Host/home/a b",
            "vscode-remote",
            "ssh-remote+My.Host",
            "ssh-remote",
            "/home/a b",
            None,
            "vscode-remote://ssh-remote%2Bmy.host/home/a%20b",
        ),
        (
            "vscode-remote://wsl%2Bubuntu/home/x",
            "vscode-remote",
            "wsl+ubuntu",
            "wsl",
            "/home/x",
            None,
            None,
        ),
        (
            f"vscode-remote://dev-container%2B{DEV_HEX}/workspaces/proj",
            "vscode-remote",
            f"dev-container+{DEV_HEX}",
            "dev-container",
            "/workspaces/proj",
            None,
            None,
        ),
    ],
)
def test_parse(raw, scheme, authority, kind, path, local, canonical):
    u = parse_uri(raw, "linux")
    assert (u.scheme, u.authority, u.remote_kind, u.path, u.local_path) == (
        scheme,
        authority,
        kind,
        path,
        local,
    )
    assert u.to_string() == (canonical or raw)
    assert parse_uri(u.to_string(), "linux") == parse_uri(u.to_string(), "linux")


def test_remote_details():
    ssh = parse_uri("vscode-remote://ssh-remote%2Bhost/home/me/proj/", "linux")
    assert ssh.is_remote and ssh.remote_name == "host"
    assert ssh.editor_path() == "/home/me/proj"
    dev = parse_uri(f"vscode-remote://dev-container%2B{DEV_HEX}/workspaces/proj", "linux")
    assert dev.remote_info == {"hostPath": "/home/x/proj"}
    assert dev.alternative_paths() == ["/home/x/proj"]
    wsl_unc = parse_uri("file://wsl.localhost/Ubuntu/home/x", "win32")
    assert wsl_unc.alternative_paths() == ["/home/x"]


def test_bare_paths_are_file_uris():
    assert parse_uri("C:\\Users\\Me\\x", "win32").to_string() == "file:///c%3A/Users/Me/x"
    assert parse_uri("C:\\Users\\Me\\x", "linux").local_path == "c:\\Users\\Me\\x"
    assert parse_uri("/home/x", "linux").to_string() == "file:///home/x"
    assert parse_uri("~/proj", "linux").local_path == os.path.expanduser("~/proj")
    assert parse_uri("\\\\server\\share\\x", "win32").authority == "server"


def test_percent_decode_is_graceful():
    assert percent_decode("a%20b") == "a b"
    assert percent_decode("100%zz") == "100%zz"
    assert percent_decode("%E9x") == "%E9x"  # lone Latin-1 byte: not UTF-8, kept
    assert percent_decode("%E9%C3%A9") == "%E9\u00e9"


def test_comparison_case_and_trailing_slash():
    assert comparison_key("/Users/Me/Proj/", "darwin") == comparison_key("/users/me/proj", "darwin")
    assert comparison_key("/home/Me/Proj", "linux") != comparison_key("/home/me/proj", "linux")
    assert comparison_key("C:\\Users\\Me\\", "win32") == comparison_key("c:/users/me", "win32")
    assert comparison_key("/", "linux") == "/"


def test_comparison_nfc_nfd():
    nfd = unicodedata.normalize("NFD", "/Users/me/caf\u00e9")
    assert nfd != "/Users/me/caf\u00e9"
    assert comparison_key(nfd, "darwin") == comparison_key("/Users/me/caf\u00e9", "darwin")


def test_comparison_resolves_symlinks(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert comparison_key(str(link), "linux") == comparison_key(str(real), "linux")
    assert comparison_key(str(tmp_path / "nope"), "linux") == str(tmp_path / "nope")


def test_comparison_keys_cross_wsl():
    assert comparison_keys("c:\\Users\\Me\\proj", "linux") & comparison_keys(
        "/mnt/c/Users/Me/proj", "linux"
    )
    assert "/home/Dev/x" in comparison_keys("\\\\wsl.localhost\\Ubuntu\\home\\Dev\\x", "win32")
