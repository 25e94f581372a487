"""End to end through the installed hook command, exactly as Cursor runs it: the command line
from hooks.json, through ``/bin/sh``, working directory ``~/.cursor``, a minimal environment
(no venv, ``PATH=/usr/bin:/bin``, no ``BLUEPLANE_*``). A real server and a real Redis."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import redis as sync_redis

from blueplane.broker import BundledRedis, _free_port
from blueplane.cursor.transcripts import project_folder_key
from tests.conftest import BlueplaneEnv, wait_until
from tests.fixtures.cursor_db import (
    UserDir,
    make_assistant_bubble,
    make_user_bubble,
    make_workspace_identifier,
)

pytestmark = pytest.mark.integration

SEQUENCE = Path(__file__).resolve().parents[1] / "fixtures" / "hooks" / "cursor-3.7-sequence.jsonl"
CID = "7f3e0a1b-5c2d-4e6f-8a9b-0c1d2e3f4a5b"
G1 = "c0ffee01-0000-4000-8000-000000000001"
G2 = "c0ffee02-0000-4000-8000-000000000002"
# Per call, in a test on a shared 2-core machine (other jobs push the load average past 15);
# the p99 of 50 ms is measured by bench/bench_hooks.py.
BUDGET_S = 2.0


def user_home(env: BlueplaneEnv) -> Path:
    home = env.home.parent / "user"
    (home / ".cursor").mkdir(parents=True, exist_ok=True)
    env.home.mkdir(parents=True, exist_ok=True)
    env.extra["HOME"] = str(home)
    return home


def installed_commands(home: Path) -> dict[str, str]:
    data = json.loads((home / ".cursor" / "hooks.json").read_text())
    return {
        event: next(e["command"] for e in entries if "blueplane/hooks/emit.py" in e["command"])
        for event, entries in data["hooks"].items()
    }


def run_hook(command: str, event: dict, home: Path) -> tuple[subprocess.CompletedProcess, float]:
    """As Cursor runs a hook: its shell, cwd = the folder of hooks.json, its own environment."""
    started = time.monotonic()
    proc = subprocess.run(
        ["/bin/sh", "-c", command], input=json.dumps(event).encode(), capture_output=True,
        cwd=home / ".cursor", env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=10,
    )  # fmt: skip
    return proc, time.monotonic() - started


def recorded_events(workspace: Path, transcript: Path) -> list[dict]:
    text = SEQUENCE.read_text()
    text = text.replace("__WORKSPACE__", str(workspace)).replace("__TRANSCRIPT__", str(transcript))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stream_consumed(r: sync_redis.Redis) -> bool:
    """The fast path has stored and acknowledged everything on the stream so far."""
    last = r.xinfo_stream("telemetry:events")["last-generated-id"]
    for g in r.xinfo_groups("telemetry:events"):
        if g["name"] == "blueplane-fast-path":
            return g["pending"] == 0 and g["last-delivered-id"] == last
    return False


def hook_entries_on_stream(r: sync_redis.Redis) -> int:
    return sum(1 for _, f in r.xrange("telemetry:events") if f.get("hook_type") == "CursorHook")


def stored_hook_events(env: BlueplaneEnv) -> list[tuple[str, str]]:
    path = env.home / "telemetry.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT event_type, payload FROM events WHERE hook_type = 'CursorHook' ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()


def write_transcript(home: Path, workspace: Path) -> Path:
    folder = (
        home / ".cursor" / "projects" / project_folder_key(str(workspace))
        / "agent-transcripts" / CID
    )  # fmt: skip
    folder.mkdir(parents=True)
    lines = [
        {"role": "user", "message": {"content": [{"type": "text", "text":
            "<timestamp>Fri Nov 27 2026</timestamp>\n<user_query>\ntell me about this codebase\n"
            "</user_query>"}]}},
        {"role": "assistant", "message": {"content": [
            {"type": "text", "text": "It is a small TypeScript app."},
            {"type": "tool_use", "id": "toolu_01", "name": "read_file", "input": {}}]}},
        {"type": "turn_ended", "status": "success"},
        {"role": "user", "message": {"content": [{"type": "text", "text": "run the tests"}]}},
    ]  # fmt: skip
    path = folder / f"{CID}.jsonl"
    body = "\n".join(json.dumps(x) for x in lines) + "\nthis line is not json\n"
    # the assistant's answer to turn 2 is still being written: half a line
    path.write_text(body + '{"role": "assistant", "message": {"content": [{"type": "te')
    return path


def test_recorded_sequence_through_the_installed_command(bp_env: BlueplaneEnv, server) -> None:
    home = user_home(bp_env)
    workspace = bp_env.home.parent / "proj"
    workspace.mkdir()
    bp_env.extra["BLUEPLANE_HOOKS__SPOOL_REPLAY_SECONDS"] = "0.2"
    out = bp_env.cli("hooks", "install").stdout
    assert "installed in" in out
    commands = installed_commands(home)
    assert sorted(commands) == sorted(
        ["sessionStart", "sessionEnd", "beforeSubmitPrompt", "afterAgentResponse",
         "afterAgentThought", "stop", "preToolUse", "postToolUse", "postToolUseFailure",
         "subagentStart", "subagentStop", "afterFileEdit", "afterShellExecution"]
    )  # fmt: skip
    transcript = write_transcript(home, workspace)
    # Cursor's databases hold turn 1 too: its answer bubble's requestId is the hook's
    # generation_id; the bubble's own token counts must not be added to the hook's.
    ud = UserDir(bp_env.cursor_dirs[0])
    ws = ud.add_workspace(str(workspace))
    ud.global_db().put_conversation(
        [make_user_bubble("tell me about this codebase"),
         make_assistant_bubble("It is a small TypeScript app.", requestId=G1,
                               tokenCount={"inputTokens": 999, "outputTokens": 9},
                               toolFormerData={"tool": 5, "toolCallId": "toolu_01",
                                               "name": "read_file", "status": "completed"})],
        composerId=CID, name="Codebase tour",
        workspaceIdentifier=make_workspace_identifier(ws.id, str(workspace)),
    )  # fmt: skip
    server()
    events = recorded_events(workspace, transcript)
    r = sync_redis.Redis.from_url(bp_env.redis_url, decode_responses=True)
    for i, event in enumerate(events):
        proc, took = run_hook(commands[event["hook_event_name"]], event, home)
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)
        expected = {"continue": True} if event["hook_event_name"] == "beforeSubmitPrompt" else {}
        assert answer == expected
        assert took < BUDGET_S, f"{event['hook_event_name']} took {took:.3f} s"
        if i == 0:  # sessionStart makes the workspace active, without any extension
            wait_until(lambda: CID in r.hgetall("blueplane:sessions"), what="hook session")
            session = json.loads(r.hget("blueplane:sessions", CID))
            assert session["source"] == "hook" and session["workspace_path"] == str(workspace)
        if i == 9:  # the transcript's half-written answer is finished while the agent runs
            with transcript.open("a") as f:
                f.write('xt", "text": "The tests fail: exit 1."}]}}\n')
                f.write(json.dumps({"type": "turn_ended", "status": "success"}) + "\n")
    assert not list((bp_env.home / "spool").glob("*.json")), "nothing was spooled"
    stored = wait_until(
        lambda: (s := stored_hook_events(bp_env)) and len(s) >= len(events) and s,
        what="every hook event in the store",
    )
    # each event exactly once: on the stream, and in the store once it caught up with it
    assert hook_entries_on_stream(r) == len(events)
    wait_until(lambda: stream_consumed(r), what="the fast path to catch up with the stream")
    stored = stored_hook_events(bp_env)
    assert [e for e, _ in stored] == [e["hook_event_name"] for e in events]
    shell = next(json.loads(p) for e, p in stored if e == "afterShellExecution")
    assert "sk-abcdef" not in shell["output"] and "[REDACTED]" in shell["output"]
    # sessionEnd ended the hook session
    wait_until(lambda: CID not in r.hgetall("blueplane:sessions"), what="session ended")

    def shown() -> dict | None:
        got = json.loads(bp_env.cli("show", CID, "--json").stdout)
        srcs = [t["sources"] for t in got["turns"]]
        return got if srcs == [["database", "hook", "transcript"], ["hook", "transcript"]] else None

    conv = wait_until(shown, what="turn 1 seen by all three sources, turn 2 by two")
    assert conv["title"] == "Codebase tour"
    assert conv["sources"] == ["database", "hook", "transcript"]
    t1, t2 = conv["turns"]
    assert [t1["generation_id"], t2["generation_id"]] == [G1, G2]
    # exact tokens, counted once (afterAgentResponse and stop both carried them)
    assert [t1[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                            "cache_write_tokens")] == [1200, 85, 3000, 40]  # fmt: skip
    assert [t2["input_tokens"], t2["output_tokens"], t2["cache_read_tokens"]] == [2500, 120, 0]
    assert (conv["input_tokens"], conv["output_tokens"]) == (3700, 205)
    assert t1["prompt"] == "tell me about this codebase" and t2["prompt"] == "run the tests"
    assert t2["response"] == "The tests fail: exit 1."
    assert t1["model"] == "claude-4.5-sonnet" and conv["models"] == ["claude-4.5-sonnet"]
    # one tool call, seen by the hook and the database
    assert t1["tools"] == [{"name": "read_file", "duration_ms": 14, "ok": True}]
    assert {"name": "run_terminal_cmd", "duration_ms": 3100, "ok": False} in t2["tools"]
    assert t1["duration_ms"] is not None and t1["duration_ms"] >= 0
    listed = bp_env.cli_json("conversations")
    assert [c["conversation_id"] for c in listed if c["conversation_id"] == CID] == [CID]
    # every transcript line once, the bad one skipped and counted
    lines = bp_env.traces("--limit", "1000", trace_type="transcript_message")
    assert sorted(t["payload"]["line"] for t in lines) == [0, 1, 2, 3, 5, 6]  # 4: not JSON

    def bad_lines() -> int | None:  # status.json is rewritten every 2 s
        st = json.loads((bp_env.home / "status.json").read_text())
        return st["components"].get("transcripts", {}).get("counters", {}).get("bad_lines")

    assert wait_until(bad_lines, what="bad transcript line counted in status") == 1
    hs = bp_env.cli_json("hooks", "status")
    fired = hs["files"][0]["events"]
    assert fired["stop"]["installed"] and fired["stop"]["last_fired"] is not None
    assert fired["afterAgentThought"]["last_fired"] is not None
    r.close()


def test_redis_stopped_hooks_answer_and_spool_replays_exactly_once(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    home = user_home(bp_env)
    workspace = tmp_path / "proj"
    workspace.mkdir()
    port = _free_port()
    redis = BundledRedis(tmp_path / "own-redis", port=port)
    url = redis.start()
    bp_env.redis_url = url
    bp_env.extra["BLUEPLANE_HOOKS__SPOOL_REPLAY_SECONDS"] = "0.2"
    try:
        bp_env.cli("hooks", "install")
        commands = installed_commands(home)
        redis.stop()  # Redis is down while Cursor runs the hooks
        events = recorded_events(workspace, tmp_path / "none.jsonl")
        for event in events:
            proc, took = run_hook(commands[event["hook_event_name"]], event, home)
            assert proc.returncode == 0 and proc.stdout.strip() in (b"{}", b'{"continue": true}')
            assert took < BUDGET_S, f"took {took:.3f} s with Redis down"
        # bad input: still exit 0 at once, recorded once in status by the server
        proc, _ = run_hook(commands["stop"], {}, home)  # no hook_event_name
        bad = subprocess.run(
            ["/bin/sh", "-c", commands["stop"]], input=b"not json", capture_output=True,
            cwd=home / ".cursor", env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=10,
        )  # fmt: skip
        assert proc.returncode == 0 and bad.returncode == 0 and bad.stdout.strip() == b"{}"
        spooled = sorted((bp_env.home / "spool").glob("*.json"))
        assert len(spooled) == len(events) + 2
        redis.start()  # Redis returns, on the same port
        server()
        wait_until(lambda: len(stored_hook_events(bp_env)) >= len(events), what="replayed events")
        wait_until(lambda: not list((bp_env.home / "spool").glob("*.json")), what="spool empty")
        # a spool file that reappears (a crash between replay and delete) is not sent again
        again = bp_env.home / "spool" / spooled[3].name
        first = json.loads(spooled[3].read_text()) if spooled[3].exists() else None
        assert first is None  # it was deleted after its replay
        c = sync_redis.Redis.from_url(url, decode_responses=True)
        wait_until(lambda: stream_consumed(c), what="the fast path to catch up with the stream")
        stored = stored_hook_events(bp_env)
        assert sorted(e for e, _ in stored) == sorted(e["hook_event_name"] for e in events)
        on_stream = [
            f for _, f in c.xrange("telemetry:events") if f.get("hook_type") == "CursorHook"
        ]
        assert len(on_stream) == len(events)
        ids = [f["event_id"] for f in on_stream]
        again.write_text(json.dumps({"fields": on_stream[3], "error": "replayed twice?"}))
        wait_until(lambda: not again.exists(), what="re-appeared spool file handled")
        assert len([f for _, f in c.xrange("telemetry:events")
                    if f.get("hook_type") == "CursorHook"]) == len(events)  # fmt: skip
        assert len(set(ids)) == len(events)
        c.close()

        def reported() -> dict | None:
            st = json.loads((bp_env.home / "status.json").read_text())
            comp = st["components"].get("hook_spool", {})
            counters = comp.get("counters", {})
            # status.json is written on a tick: wait for the snapshot that counts both outcomes
            done = counters.get("bad_hook_input") == 2 and "already_replayed" in counters
            return comp if done else None

        comp = wait_until(reported, what="bad input recorded in status")
        assert comp["counters"]["replayed"] == len(events)
        assert comp["counters"]["already_replayed"] == 1
        assert "hook input" in comp["last_error"]
    finally:
        redis.stop()


def test_cli_project_install_dry_run_malformed_and_uninstall(
    bp_env: BlueplaneEnv, tmp_path: Path
) -> None:
    home = user_home(bp_env)
    project = tmp_path / "proj"
    (project / ".cursor").mkdir(parents=True)
    path = project / ".cursor" / "hooks.json"
    path.write_text('{"hooks": {"stop": [{"command": "mine.sh"}]}}')
    dry = bp_env.cli("hooks", "install", "--project", str(project), "--dry-run").stdout
    assert "emit.py" in json.loads(dry)["hooks"]["stop"][1]["command"]
    assert json.loads(path.read_text()) == {"hooks": {"stop": [{"command": "mine.sh"}]}}
    bp_env.cli("hooks", "install", "--project", str(project))
    assert not (home / ".cursor" / "hooks.json").exists()  # the user file is not touched
    st = bp_env.cli_json("hooks", "status")
    assert [f["path"] for f in st["files"]] == [str(path)]
    bp_env.cli("hooks", "uninstall", "--project", str(project))
    assert json.loads(path.read_text()) == {"hooks": {"stop": [{"command": "mine.sh"}]}}
    path.write_text('{"hooks": {"stop": "mine.sh"}}')
    for cmd in (("install",), ("uninstall",)):
        proc = bp_env.cli("hooks", *cmd, "--project", str(project), check=False)
        assert proc.returncode == 2 and "hooks.stop" in proc.stderr
    assert path.read_text() == '{"hooks": {"stop": "mine.sh"}}'
