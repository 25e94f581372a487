"""How the OTLP exporter reconciles one turn from the database's messages and hook events:
the rules of the store's conversation index (tokens, model, content, tools)."""

from __future__ import annotations

from typing import Any

from blueplane.fast_path.consumer import parse_entry
from blueplane.hooks.emit import build_fields
from blueplane.otlp import Turn


def hook_event(name: str, **fields: Any) -> Any:
    event = {"conversation_id": "c", "generation_id": "g", "model": "claude-4.5-sonnet",
             "hook_event_name": name, "workspace_roots": ["/w"], **fields}  # fmt: skip
    return parse_entry("1-0", build_fields(event, {"capture_content": True}))


def test_the_same_hook_event_twice_counts_once() -> None:
    turn = Turn("c:g", "c", "g", None)
    ev = hook_event("afterAgentResponse", text="hi", input_tokens=10, output_tokens=2)
    turn.add_hook(ev, 0.0)
    turn.add_hook(ev, 1.0)
    assert (turn.input_tokens, turn.output_tokens, turn.cache_read_tokens) == (10, 2, None)
    assert turn.response == ["hi"]


def test_tool_calls_without_ids_pair_in_order_and_keep_cursor_duration() -> None:
    turn = Turn("c:g", "c", "g", None)
    for name, extra in (
        ("preToolUse", {}),
        ("preToolUse", {}),
        ("postToolUse", {"duration": 5}),
        ("postToolUseFailure", {"duration": 7, "failure_type": "timeout"}),
    ):
        turn.add_hook(hook_event(name, tool_name="grep", **extra), 0.0)
    first, second = turn.tools
    assert (first.name, first.failed, first.duration_ms) == ("grep", False, 5)
    assert (second.failed, second.failure_type, second.duration_ms) == (True, "timeout", 7)
    start, end = first.bounds(None, None)
    assert start is not None and end is not None and end - start == 5


def test_model_default_is_auto_so_the_database_names_it() -> None:
    turn = Turn("c:g", "c", "g", None)
    turn.add_hook(hook_event("beforeSubmitPrompt", prompt="p", model="default"), 0.0)
    assert turn.model == "default"  # nothing better known
    turn.db_model = "gpt-5"
    assert turn.model == "gpt-5"
    turn.add_hook(hook_event("stop", status="completed"), 0.0)  # model claude-4.5-sonnet
    assert turn.model == "claude-4.5-sonnet"
    assert turn.token_source is None and turn.input_tokens is None  # never a made-up 0
