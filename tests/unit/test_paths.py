"""Where Cursor's User folders are, per platform, and which ones are kept."""

from __future__ import annotations

from pathlib import Path

from blueplane.cursor.paths import default_user_dirs, global_databases, is_wsl, resolve_user_dirs

HOME = Path("/home/me")
WSL_KERNEL = "Linux version 5.15.153.1-microsoft-standard-WSL2 (gcc ...)"


def test_macos():
    dirs = default_user_dirs("darwin", Path("/Users/me"), {}, proc_version="")
    assert dirs == [
        Path("/Users/me/Library/Application Support/Cursor/User"),
        Path("/Users/me/.cursor-server/data/User"),
    ]


def test_linux_and_xdg():
    assert default_user_dirs("linux", HOME, {}, proc_version="Linux version 6.1")[0] == Path(
        "/home/me/.config/Cursor/User"
    )
    xdg = default_user_dirs("linux", HOME, {"XDG_CONFIG_HOME": "/cfg"}, proc_version="")
    assert xdg[0] == Path("/cfg/Cursor/User")
    # a relative XDG_CONFIG_HOME is invalid per the spec and ignored
    rel = default_user_dirs("linux", HOME, {"XDG_CONFIG_HOME": "cfg"}, proc_version="")
    assert rel[0] == Path("/home/me/.config/Cursor/User")


def test_windows_appdata():
    dirs = default_user_dirs("win32", Path("C:/Users/me"), {"APPDATA": "D:/Roaming"})
    assert dirs[0] == Path("D:/Roaming") / "Cursor" / "User"
    fallback = default_user_dirs("win32", Path("C:/Users/me"), {})
    assert fallback[0] == Path("C:/Users/me") / "AppData" / "Roaming" / "Cursor" / "User"


def test_wsl_adds_windows_side(tmp_path: Path):
    users = tmp_path / "Users"
    for u in ("alice", "Public", "bob"):
        (users / u).mkdir(parents=True)
    dirs = default_user_dirs("linux", HOME, {}, proc_version=WSL_KERNEL, windows_users_root=users)
    assert dirs[2:] == [
        users / "alice/AppData/Roaming/Cursor/User",
        users / "bob/AppData/Roaming/Cursor/User",
    ]
    not_wsl = default_user_dirs(
        "linux", HOME, {}, proc_version="Linux 6.1", windows_users_root=users
    )
    assert len(not_wsl) == 2
    assert is_wsl("Linux version 4.4.0-19041-Microsoft") and not is_wsl("Linux version 6.1")


def test_resolve_configured_root_and_user_dir_deduplicated(tmp_path: Path):
    root = tmp_path / "data-dir"
    (root / "User" / "workspaceStorage").mkdir(parents=True)
    other = tmp_path / "other" / "User"
    (other / "globalStorage").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(root)
    got = resolve_user_dirs(
        [root, root / "User", link, other, tmp_path / "missing"], platform="linux"
    )
    assert got == [root / "User", other]


def test_resolve_defaults_only_existing(tmp_path: Path):
    (tmp_path / ".config" / "Cursor" / "User").mkdir(parents=True)
    got = resolve_user_dirs([], platform="linux", home=tmp_path, env={}, proc_version="")
    assert got == [tmp_path / ".config" / "Cursor" / "User"]


def test_global_databases_include_profiles(tmp_path: Path):
    user = tmp_path / "User"
    (user / "globalStorage").mkdir(parents=True)
    (user / "globalStorage" / "state.vscdb").write_bytes(b"")
    prof = user / "profiles" / "-5e3b1c2a"
    (prof / "globalStorage").mkdir(parents=True)
    (prof / "globalStorage" / "state.vscdb").write_bytes(b"")
    (user / "profiles" / "shares-default").mkdir()  # useDefaultFlags.globalState: no own db
    assert global_databases(user) == [
        user / "globalStorage" / "state.vscdb",
        prof / "globalStorage" / "state.vscdb",
    ]
