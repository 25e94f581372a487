"""TranscriptFollower against a real Redis: each line exactly once (also across a restart and
while the agent appends), a half-written last line waits, bad lines are skipped and counted,
subagent transcripts name their parent."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.cursor.transcripts import (
    FileState,
    TranscriptFollower,
    conversation_of,
    parse_lines,
    project_folder_key,
)
from blueplane.events import workspace_hash
from blueplane.health import Health
from blueplane.publisher import Publisher

STREAM = "telemetry:events"
CID = "c0nv"


def line(role: str, text: str) -> str:
    return json.dumps({"role": role, "message": {"content": [{"type": "text", "text": text}]}})


def test_parse_lines_half_line_bad_lines_and_turns() -> None:
    data = (line("assistant", "preamble") + "\n" + line("user", "q1") + "\n" + "{broken\n"
            + "[1]\n" + line("assistant", "a1") + "\n" + '{"type":"turn_ended"}\n'
            + line("user", "q2") + "\n" + '{"role": "assis').encode()  # fmt: skip
    p = parse_lines(data, FileState(), conversation_id=CID, parent_id=None, path="/x",
                    capture_content=True, redact=True, take_tail=False)  # fmt: skip
    assert [(x.line, x.turn_index, x.role) for x in p.payloads] == [
        (0, -1, "assistant"), (1, 0, "user"), (4, 0, "assistant"), (5, 0, None), (6, 1, "user"),
    ]  # fmt: skip
    assert p.payloads[3].entry_type == "turn_ended"
    assert [n for n, _ in p.bad_lines] == [2, 3] and p.state.bad == 2
    assert p.state.offset == len(data) - len(b'{"role": "assis')
    # the rest of the line arrives: read from the offset, numbering and turn continue
    rest = b'tant", "message": {"content": [{"type": "text", "text": "a2"}]}}\n'
    q = parse_lines(b'{"role": "assis' + rest, p.state, conversation_id=CID, parent_id=None,
                    path="/x", capture_content=False, redact=True, take_tail=False)  # fmt: skip
    (last,) = q.payloads
    assert (last.line, last.turn_index, last.text, last.text_length) == (7, 1, None, 2)
    assert conversation_of(Path("/p/agent-transcripts/c/subagents/s1.jsonl")) == ("s1", "c")
    assert conversation_of(Path("/p/agent-transcripts/c/c.jsonl")) == ("c", None)
    assert project_folder_key("/Users/me/my.proj") == project_folder_key("Users-me-my-proj")


async def lines_on_stream(client: aioredis.Redis) -> list[dict]:
    out = []
    for _, f in await client.xrange(STREAM):
        payload = json.loads(f[b"payload"])
        if payload.get("trace_type") == "transcript_message":
            out.append(payload)
    return out


async def test_follower_exactly_once_across_restart(client, tmp_path: Path) -> None:
    ws_path = str(tmp_path / "proj")
    sessions = SessionMonitor(client, STREAM, tmp_path / "sess", Health(), block_ms=None)
    (tmp_path / "sess").mkdir()
    (tmp_path / "sess" / f"{workspace_hash(ws_path)}.json").write_text(
        json.dumps({"CURSOR_SESSION_ID": "s1", "workspace_path": ws_path})
    )
    sessions.scan_session_files()
    projects = tmp_path / "projects"
    folder = projects / project_folder_key(ws_path) / "agent-transcripts" / CID
    (folder / "subagents").mkdir(parents=True)
    main = folder / f"{CID}.jsonl"
    main.write_text(line("user", "q1") + "\nnot json\n" + line("assistant", "a1") + "\n")
    (folder / "subagents" / "sub1.jsonl").write_text(line("user", "task") + "\n")

    def follower(health: Health) -> TranscriptFollower:
        return TranscriptFollower(sessions, Publisher(client, STREAM, 86400), projects, health)

    h = Health()
    f1 = follower(h)
    assert await f1.poll_once() == 3
    assert await f1.poll_once() == 0
    got = await lines_on_stream(client)
    sub = [p for p in got if p["conversation_id"] == "sub1"]
    assert sub[0]["parent_conversation_id"] == CID
    assert h.component("transcripts").counters["bad_lines"] == 1
    with main.open("a") as f:
        f.write(line("user", "q2") + "\n" + '{"role": "assistant", "mess')
    f2 = follower(Health())  # a restart: the position comes from Redis
    assert await f2.poll_once() == 1
    with main.open("a") as f:
        f.write('age": {"content": []}}\n')
    assert await f2.poll_once() == 1
    got = await lines_on_stream(client)
    main_lines = sorted(p["line"] for p in got if p["conversation_id"] == CID)
    assert main_lines == [0, 2, 3, 4]  # line 1 was not JSON
    assert [p["turn_index"] for p in sorted(got, key=lambda p: p["line"])
            if p["conversation_id"] == CID] == [0, 0, 1, 1]  # fmt: skip
    # the file is replaced by a shorter one: read again from the start, no line sent twice
    main.write_text(line("user", "q1") + "\n")
    assert await follower(Health()).poll_once() == 0
    assert len(await lines_on_stream(client)) == len(got)
