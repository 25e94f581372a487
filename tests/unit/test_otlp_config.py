"""The ``otlp:`` section and the standard OTEL_* variables decide whether turns are exported."""

from __future__ import annotations

import pytest

from blueplane.config import load_settings


def test_otlp_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert not load_settings().otlp.active()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().otlp.active()  # the standard variable alone turns it on
    monkeypatch.setenv("BLUEPLANE_OTLP__ENABLED", "false")
    assert not load_settings().otlp.active()  # an explicit "no" wins
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("BLUEPLANE_OTLP__ENABLED", "true")
    monkeypatch.setenv("BLUEPLANE_OTLP__HEADERS", '{"x-api-key": "k"}')
    s = load_settings()
    assert s.otlp.active() and s.otlp.headers == {"x-api-key": "k"}
    assert s.otlp.capture_content is False  # text stays home by default


def test_a_turn_sums_its_messages_and_keeps_the_latest_revision_of_each() -> None:
    from blueplane.otlp import Turn
    from blueplane.store import StoredEvent

    def msg(bubble: str, revision: int, tin: int | None, tout: int | None, text: str,
            tools: list[dict] | None = None) -> StoredEvent:  # fmt: skip
        p = {"role": "assistant", "bubble_id": bubble, "model": "gpt-5", "text": text,
             "input_tokens": tin, "output_tokens": tout, "tokens_reported": tin is not None,
             "tool_calls": tools or []}  # fmt: skip
        return StoredEvent(f"{bubble}-{revision}", "1-0", "database_trace", None, "cursor",
                           "message", "s", "w", "g", bubble, revision, None, 1000 + revision,
                           p, {})  # fmt: skip

    t = Turn("c:g", "c", "g", "w")
    t.add(msg("a", 0, None, None, "Looking", [{"name": "grep", "tool_call_id": "1"}]), 0.0)
    t.add(msg("b", 0, 100, 20, "Done"), 0.0)
    assert (t.input_tokens, t.output_tokens, t.cache_read_tokens) == (100, 20, None)
    t.add(msg("a", 1, 50, 5, "Looking again", [{"name": "grep", "tool_call_id": "1"}]), 0.0)
    t.add(msg("a", 0, 999, 999, "stale redelivery"), 0.0)  # an older revision: ignored
    assert (t.input_tokens, t.output_tokens) == (150, 25)
    assert t.response == ["Looking again", "Done"]
    assert [(x.name, x.call_id) for x in t.tools] == [("grep", "1")]
    # Cursor's {0,0} (tokens_reported false) is no count, as in the store's conversations
    zero = msg("c", 0, 0, 0, "More")
    zero.payload["tokens_reported"] = False
    t.add(zero, 0.0)
    assert (t.input_tokens, t.output_tokens, t.token_source) == (150, 25, "database")
