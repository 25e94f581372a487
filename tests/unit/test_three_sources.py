"""A turn seen by the database, a hook and the transcript is one turn with three sources,
whatever order the three arrive in; tokens come from the hook, once; content from the best
source that has it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from blueplane import conversations
from blueplane.cursor.transcripts import FileState, parse_lines
from blueplane.events import MessagePayload, TraceEvent, TraceMetadata, iso_from_ms
from blueplane.fast_path.consumer import parse_entry
from blueplane.hooks.emit import build_fields
from blueplane.store import StoredEvent, TraceStore

CID = "conv-3src"
GEN = "gen-1"
WS_PATH = "/home/me/p"
T0 = 1_766_691_308_000


def trace(n: int, payload, at_ms: int) -> StoredEvent:
    ev = TraceEvent(
        event_id=f"db{n}", session_id="s", external_session_id="s", timestamp=iso_from_ms(at_ms),
        metadata=TraceMetadata(workspace_hash="w", workspace_path=WS_PATH),
        payload=payload.to_json_dict(),
    )  # fmt: skip
    return parse_entry(f"{n}-0", ev.to_fields())


def database_events() -> list[StoredEvent]:
    user = MessagePayload(generation_id="b-u", item_id="b-u", role="user", composer_id=CID,
                          bubble_id="b-u", text="fix the bug", text_length=11)  # fmt: skip
    answer = MessagePayload(
        generation_id=GEN, item_id="b-a", role="assistant", composer_id=CID, bubble_id="b-a",
        request_id=GEN, text="Fixed", text_length=5, model="gpt-5", input_tokens=999,
        output_tokens=9, tokens_reported=True,
    )  # fmt: skip
    return [trace(1, user, T0), trace(2, answer, T0 + 3000)]


def hook_events() -> list[StoredEvent]:
    base = {"conversation_id": CID, "generation_id": GEN, "workspace_roots": [WS_PATH],
            "model": "gpt-5"}  # fmt: skip
    tokens = {"input_tokens": 1500, "output_tokens": 40, "cache_read_tokens": 7,
              "cache_write_tokens": 3}  # fmt: skip
    raw = [
        {**base, "hook_event_name": "beforeSubmitPrompt", "prompt": "fix the bug"},
        {**base, "hook_event_name": "afterAgentResponse", "text": "Fixed it.", **tokens},
        {**base, "hook_event_name": "stop", "status": "completed", **tokens},
    ]
    out = []
    for i, event in enumerate(raw):
        fields = build_fields(event, {})
        fields["timestamp"] = iso_from_ms(T0 + 1000 * i)
        out.append(parse_entry(f"{10 + i}-0", {k.encode(): v.encode() for k, v in fields.items()}))
    return out


def transcript_events() -> list[StoredEvent]:
    lines = [
        {"role": "user", "message": {"content": [{"type": "text", "text": "fix the bug"}]}},
        {"role": "assistant", "message": {"content": [{"type": "text", "text": "Fixed it."}]}},
        {"type": "turn_ended", "status": "success"},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n").encode()
    parsed = parse_lines(data, FileState(), conversation_id=CID, parent_id=None, path="/t.jsonl",
                         capture_content=True, redact=True, take_tail=False)  # fmt: skip
    return [trace(20 + i, p, T0 + 5000) for i, p in enumerate(parsed.payloads)]


ORDERS = list(itertools.permutations(["database", "hook", "transcript"]))


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_one_turn_three_sources(tmp_path: Path, order: tuple[str, ...]) -> None:
    batches = {"database": database_events, "hook": hook_events, "transcript": transcript_events}
    store = TraceStore(tmp_path / "t.db")
    for name in order:
        store.write_batch(batches[name](), 86400)
    got = conversations.get_conversation(store, CID)
    assert got is not None
    conv, turns = got
    assert len(turns) == 1 and conv.turns == 1
    (turn,) = turns
    assert turn.sources == ["database", "hook", "transcript"]
    assert conv.sources == ["database", "hook", "transcript"]
    assert turn.generation_id == GEN
    # tokens: the hook's, once (afterAgentResponse and stop both carried them; not the bubble's)
    assert (turn.input_tokens, turn.output_tokens, turn.cache_read_tokens,
            turn.cache_write_tokens) == (1500, 40, 7, 3)  # fmt: skip
    assert (conv.input_tokens, conv.output_tokens) == (1500, 40)
    assert turn.prompt == "fix the bug" and turn.response == "Fixed it."
    assert turn.model == "gpt-5" and conv.workspace_path == WS_PATH
    store.close()
