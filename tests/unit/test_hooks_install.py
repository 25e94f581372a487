"""hooks.json install/uninstall keep every foreign entry, back up first, are idempotent, never
overwrite a malformed file, and status notices a file another tool rewrote; the hook command's
fields obey capture_content and redaction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blueplane.hooks import emit
from blueplane.hooks import install as hooks
from blueplane.redact import redact_text

USER_FILE = {
    "version": 1,
    "hooks": {
        "afterFileEdit": [{"command": "./hooks/format.sh"}],
        "beforeShellExecution": [{"command": "/usr/local/bin/guard --strict", "timeout": 3}],
        "stop": [{"command": "python3 ~/.cursor/hooks/notify.py"},
                 {"command": "other-tool emit", "timeout": 10}],
    },
    "x-other-tool": {"keep": ["me", 1]},
}  # fmt: skip


def without_ours(data: dict) -> dict:
    hooks_ = {
        e: [x for x in entries if not hooks.is_ours(x)] for e, entries in data["hooks"].items()
    }
    return {**data, "hooks": {e: v for e, v in hooks_.items() if v}}


def test_install_keeps_foreign_entries_backs_up_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / ".cursor" / "hooks.json"
    path.parent.mkdir()
    original = json.dumps(USER_FILE, indent=4)
    path.write_text(original)
    home = tmp_path / "bp"
    cmd = hooks.command_for(home)
    change = hooks.apply(hooks.plan_install(path, cmd), home)
    assert change.backup is not None and change.backup.read_text() == original
    data = json.loads(path.read_text())
    assert without_ours(data) == USER_FILE  # every foreign entry, in its place
    for event in hooks.EVENTS:
        assert [x["command"] for x in data["hooks"][event] if hooks.is_ours(x)] == [cmd]
    # ours comes after the user's own entries for the same event
    assert data["hooks"]["stop"][:2] == USER_FILE["hooks"]["stop"]
    written = path.read_bytes()
    again = hooks.plan_install(path, cmd)
    assert not again.changed and again.added == []
    # an install from elsewhere (another interpreter) replaces ours, adds no second entry
    other = hooks.plan_install(path, hooks.command_for(home, python="/opt/py/bin/python3"))
    assert other.changed and other.added == []
    assert path.read_bytes() == written
    removed = hooks.apply(hooks.plan_uninstall(path), home)
    assert removed.backup is not None and removed.backup.read_bytes() == written
    assert json.loads(path.read_text()) == USER_FILE
    assert not hooks.plan_uninstall(path).changed


def test_file_without_version_key_gets_none(tmp_path: Path) -> None:
    path = tmp_path / "hooks.json"
    mine = {"hooks": {"stop": [{"command": "mine.sh"}]}}
    path.write_text(json.dumps(mine))
    hooks.apply(hooks.plan_install(path, "py /x/blueplane/hooks/emit.py c"), tmp_path)
    assert "version" not in json.loads(path.read_text())
    hooks.apply(hooks.plan_uninstall(path), tmp_path)
    assert json.loads(path.read_text()) == mine


def test_install_into_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p" / ".cursor" / "hooks.json"
    change = hooks.apply(
        hooks.plan_install(path, "py -I -S /x/blueplane/hooks/emit.py c"), tmp_path
    )
    assert change.backup is None
    data = json.loads(path.read_text())
    assert data["version"] == 1 and set(data["hooks"]) == set(hooks.EVENTS)
    hooks.apply(hooks.plan_uninstall(path), tmp_path)
    assert json.loads(path.read_text()) == {"version": 1, "hooks": {}}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level is a JSON list"),
        ('{"hooks": []}', "'hooks' is a JSON list"),
        ('{"hooks": {"stop": {"command": "x"}}}', "'hooks.stop' is a JSON dict"),
    ],
)
def test_malformed_file_is_never_overwritten(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "hooks.json"
    path.write_text(text)
    with pytest.raises(hooks.MalformedHooksFile, match=why):
        hooks.plan_install(path, "cmd /blueplane/hooks/emit.py")
    with pytest.raises(hooks.MalformedHooksFile):
        hooks.plan_uninstall(path)
    assert path.read_text() == text
    assert list(tmp_path.iterdir()) == [path]


def test_status_sees_a_file_rewritten_by_another_tool(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    home = tmp_path / "bp"
    path = hooks.hooks_path()
    hooks.apply(hooks.plan_install(path, hooks.command_for(home)), home)
    st = hooks.status(home)
    assert [f["path"] for f in st["files"]] == [str(path)]
    f = st["files"][0]
    assert not f["changed_since_install"] and f["missing"] == []
    assert all(e["installed"] for e in f["events"].values())
    # another tool rewrites the file and drops two of our entries
    data = json.loads(path.read_text())
    del data["hooks"]["stop"], data["hooks"]["sessionEnd"]
    path.write_text(json.dumps(data))
    f = hooks.status(home)["files"][0]
    assert f["changed_since_install"] and sorted(f["missing"]) == ["sessionEnd", "stop"]
    assert "rewritten" in f["changed_note"] and not f["events"]["stop"]["installed"]


def test_fields_follow_design_shape_and_redact(tmp_path: Path) -> None:
    event = {
        "hook_event_name": "afterShellExecution", "conversation_id": "c1", "generation_id": "g1",
        "workspace_roots": ["/home/me/p/"], "command": "deploy",
        "output": "token ok\nexport GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789\n"
                  "AWS key AKIAABCDEFGHIJKLMNOP done",
        "transcript_path": "/t/c1.jsonl",
    }  # fmt: skip
    cfg = {"machine_id": "m1", "user": "me"}
    f = emit.build_fields(event, cfg)
    assert (f["hook_type"], f["event_type"], f["platform"], f["session_id"]) == (
        "CursorHook", "afterShellExecution", "cursor", "c1",
    )  # fmt: skip
    meta = json.loads(f["metadata"])
    assert meta == {
        "source": "cursor_hook", "workspace_hash": emit.workspace_hash("/home/me/p"),
        "workspace_path": "/home/me/p/", "conversation_id": "c1", "generation_id": "g1",
        "transcript_path": "/t/c1.jsonl", "machine_id": "m1", "user": "me",
    }  # fmt: skip
    from blueplane.events import workspace_hash

    assert meta["workspace_hash"] == workspace_hash("/home/me/p")
    payload = json.loads(f["payload"])
    assert "ghp_" not in payload["output"] and "AKIA" not in payload["output"]
    assert "GITHUB_TOKEN=[REDACTED]" in payload["output"] and "token ok" in payload["output"]
    hidden = json.loads(emit.build_fields(event, {**cfg, "capture_content": False})["payload"])
    assert "output" not in hidden and "command" not in hidden
    assert hidden["output_length"] == len(event["output"]) and len(hidden["output_sha256"]) == 64
    raw = json.loads(emit.build_fields(event, {**cfg, "redact_secrets": False})["payload"])
    assert raw["output"] == event["output"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty"),
        (b"{oops", "not JSON"),
        (b"[1]", "not an object"),
        (b'{"conversation_id": "c"}', "hook_event_name"),
        (b"x" * (emit.MAX_INPUT_BYTES + 1), "over"),
    ],
)
def test_bad_input_is_a_problem_record_and_a_neutral_answer(raw: bytes, problem: str) -> None:
    answer, record = emit.handle(raw, {"home": "/nonexistent"})
    assert answer == "{}"
    assert record is not None and problem in record["problem"]


def test_redaction_patterns() -> None:
    text = (
        "key sk-ant-api03-abcdefghijklmnopqrstuvwxyz and Bearer abcdefghijklmnopqrstuvwxyz012\n"
        "DB_PASSWORD = hunter2hunter2\n"
        "url postgresql://app:s3cretpw@db:5432/x\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n-----END RSA PRIVATE KEY-----\nafter"
    )
    out = redact_text(text)
    for secret in ("sk-ant", "abcdefghijklmnopqrstuvwxyz012", "hunter2", "s3cretpw", "MIIabc"):
        assert secret not in out
    assert out.endswith("after") and "DB_PASSWORD = [REDACTED]" in out
    assert redact_text("plain words, no secrets") == "plain words, no secrets"


def test_redaction_is_linear_on_pathological_input() -> None:
    import time

    # quadratic backtracking on 200 k characters takes minutes; linear, well under a second
    for text in ("x" * 200_000, "A_" * 100_000, ("a" * 5000 + "\n") * 40, "://" * 60_000):
        started = time.monotonic()
        redact_text(text)
        assert time.monotonic() - started < 3.0, text[:10]


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis://localhost:6379/0", ("tcp", "localhost:6379", None, None, "0")),
        ("redis://127.0.0.1/15", ("tcp", "127.0.0.1:6379", None, None, "15")),
        ("redis://:pw@h:7000/2", ("tcp", "h:7000", None, "pw", "2")),
        ("redis://u:p%40ss@h:1", ("tcp", "h:1", "u", "p@ss", "0")),
        ("unix:///run/redis.sock?db=3", ("unix", "/run/redis.sock", None, None, "3")),
    ],
)
def test_hook_command_parses_redis_urls(url: str, parsed: tuple) -> None:
    assert emit.parse_url(url) == parsed


def test_hook_command_refuses_tls_urls_by_spooling() -> None:
    with pytest.raises(ValueError, match="rediss"):
        emit.parse_url("rediss://h:6380/0")


def test_hook_command_tries_the_bundled_redis_url_file(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    cfg = {"redis_url": "redis://localhost:6379/0", "redis_url_file": str(url_file)}
    assert emit._urls(cfg) == ["redis://localhost:6379/0"]  # no bundled Redis running
    url_file.write_text("redis://127.0.0.1:40123/0\n")
    assert emit._urls(cfg) == ["redis://localhost:6379/0", "redis://127.0.0.1:40123/0"]
    assert emit._urls({"redis_url": "redis://h:1/2"}) == ["redis://h:1/2"]


def test_install_records_privacy_settings_for_the_command(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from blueplane.cli import app

    monkeypatch.setenv("HOME", str(tmp_path))
    for k in [k for k in os.environ if k.startswith("BLUEPLANE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("BLUEPLANE_HOME", str(tmp_path / "bp"))
    monkeypatch.setenv("BLUEPLANE_CURSOR_DATABASE_MONITOR__CAPTURE_CONTENT", "false")
    result = CliRunner().invoke(app, ["hooks", "install"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "bp" / "hooks" / "hook-config.json").read_text())
    assert cfg["capture_content"] is False and cfg["redact_secrets"] is True
    assert cfg["home"] == str((tmp_path / "bp").resolve()) and cfg["machine_id"]
    assert cfg["redis_url_file"] == str((tmp_path / "bp" / "redis" / "url").resolve())
    monkeypatch.setenv("BLUEPLANE_HOOKS__CAPTURE_CONTENT", "true")
    assert CliRunner().invoke(app, ["hooks", "install"]).exit_code == 0
    cfg = json.loads((tmp_path / "bp" / "hooks" / "hook-config.json").read_text())
    assert cfg["capture_content"] is True  # the hooks section wins over the monitor's
