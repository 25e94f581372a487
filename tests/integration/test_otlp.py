"""OTLP export against a real receiver on loopback: GenAI spans, exactly once per turn across a
collector outage and a restart of the server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis as sync_redis
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from blueplane.events import TraceEvent, TraceMetadata
from blueplane.hooks.emit import build_fields, workspace_hash
from tests.conftest import BlueplaneEnv, wait_until
from tests.integration.test_hooks_e2e import (
    CID,
    G1,
    G2,
    installed_commands,
    recorded_events,
    run_hook,
    user_home,
)

pytestmark = pytest.mark.integration

WS = "ab12cd34ef56ab78"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP collector: decodes what it accepts; answers 503 while ``down``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.down = False
        self.spans: list[dict[str, Any]] = []
        self.metric_names: set[str] = set()
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def chat_spans(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"].startswith("chat ")]

    def of_turn(self, gen: str) -> list[dict[str, Any]]:
        return [s for s in self.chat_spans() if s["attributes"]["gen_ai.response.id"] == gen]

    def children(self, span: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["parent_span_id"] == span["span_id"]]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.down:
            with self.server.lock:
                self.server.refused += 1
            self.send_response(503)
            self.end_headers()
            return
        if self.path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            with self.server.lock:
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            self.server.spans.append({
                                "name": sp.name, "trace_id": sp.trace_id.hex(),
                                "span_id": sp.span_id.hex(),
                                "parent_span_id": sp.parent_span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in sp.attributes},
                                "auth": self.headers.get("x-api-key"),
                                "start_ns": sp.start_time_unix_nano,
                                "end_ns": sp.end_time_unix_nano,
                                "status": (sp.status.code, sp.status.message),
                            })  # fmt: skip
        elif self.path == "/v1/metrics":
            req = ExportMetricsServiceRequest.FromString(body)
            with self.server.lock:
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        self.server.metric_names.update(m.name for m in sm.metrics)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    t = threading.Thread(target=r.serve_forever, daemon=True)
    t.start()
    yield r
    r.shutdown()
    r.server_close()


_seq = iter(range(1, 10_000))


def message(
    conv: str, gen: str, bubble: str, role: str, text: str, *, revision: int = 0,
    model: str | None = "claude-4.5-sonnet", tin: int | None = None, tout: int | None = None,
    tools: list[dict] | None = None, at_ms: int | None = None,
) -> dict[str, str]:  # fmt: skip
    n = next(_seq)
    at = at_ms if at_ms is not None else 1_795_000_000_000 + n * 1000
    payload: dict[str, Any] = {
        "trace_type": "message", "generation_id": gen, "item_id": bubble, "revision": revision,
        "role": role, "bubble_id": bubble, "composer_id": conv, "request_id": gen, "text": text,
        "text_length": len(text), "client_rpc_send_time_ms": at, "client_end_time_ms": at + 700,
    }  # fmt: skip
    if role == "assistant":
        payload.update(
            model=model, input_tokens=tin, output_tokens=tout, tokens_reported=tin is not None
        )
        if tools:
            payload["tool_calls"] = tools
    ev = TraceEvent(
        event_id=TraceEvent.make_event_id(WS, f"message:{bubble}:{revision}"),
        session_id="window-1", external_session_id="window-1",
        timestamp="2026-11-18T10:00:00.000Z", metadata=TraceMetadata(workspace_hash=WS),
        payload=payload,
    )  # fmt: skip
    return ev.to_fields()


def otlp_env(bp_env: BlueplaneEnv, receiver: Receiver) -> None:
    bp_env.extra.update(
        BLUEPLANE_OTLP__ENABLED="true",
        BLUEPLANE_OTLP__ENDPOINT=receiver.url,
        BLUEPLANE_OTLP__HEADERS='{"x-api-key": "k-123"}',
        BLUEPLANE_OTLP__CAPTURE_CONTENT="true",
        BLUEPLANE_OTLP__SETTLE_SECONDS="0.5",
        BLUEPLANE_OTLP__TIMEOUT_SECONDS="1",
        BLUEPLANE_OTLP__RETRY_INITIAL_SECONDS="0.2",
        BLUEPLANE_OTLP__RETRY_MAX_SECONDS="1",
    )


def otlp_health(bp_env: BlueplaneEnv) -> dict[str, Any]:
    try:
        status = json.loads((bp_env.home / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status.get("components", {}).get("otlp", {})


def test_one_span_per_turn_across_an_outage_and_a_restart(
    bp_env: BlueplaneEnv, server, receiver: Receiver, redis_client: sync_redis.Redis
) -> None:
    otlp_env(bp_env, receiver)
    add = lambda fields: redis_client.xadd("telemetry:events", fields)  # noqa: E731
    proc = server()
    # Turn 1 of conv-1: a prompt, then two assistant bubbles (a tool call, then the answer).
    add(message("conv-1", "gen-1", "u1", "user", "Why does the checkout test flake?"))
    add(
        message(
            "conv-1",
            "gen-1",
            "a1",
            "assistant",
            "Let me look.",
            tin=1200,
            tout=40,
            tools=[{"name": "read_file", "tool_call_id": "call-7", "status": "completed"}],
        )
    )
    add(message("conv-1", "gen-1", "a2", "assistant", "It depends on the time zone.", tin=1500,
                tout=220))  # fmt: skip
    # Turn 2 of conv-1, and turn 1 of conv-2: each sent once quiet for the settle window.
    add(message("conv-1", "gen-2", "u2", "user", "Fix it."))
    add(message("conv-1", "gen-2", "a3", "assistant", "Fixed: UTC everywhere.", tin=2000,
                tout=300, model="gpt-5"))  # fmt: skip
    add(message("conv-2", "gen-3", "a4", "assistant", "Hello", tin=10, tout=2))
    wait_until(lambda: len(receiver.chat_spans()) == 3, timeout=20, what="three chat spans")

    spans = {s["attributes"]["gen_ai.response.id"]: s for s in receiver.chat_spans()}
    t1 = spans["gen-1"]
    assert t1["name"] == "chat claude-4.5-sonnet"
    a = t1["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "cursor"
    assert a["gen_ai.request.model"] == "claude-4.5-sonnet"
    assert a["gen_ai.conversation.id"] == "conv-1"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (2700, 260)
    assert "gen_ai.usage.cache_read.input_tokens" not in a  # unknown: absent, never 0
    assert json.loads(a["gen_ai.input.messages"])[0]["parts"][0]["content"] == (
        "Why does the checkout test flake?"
    )
    assert "time zone" in json.loads(a["gen_ai.output.messages"])[0]["parts"][0]["content"]
    assert spans["gen-2"]["name"] == "chat gpt-5"
    assert t1["auth"] == "k-123"
    with receiver.lock:
        all_spans = list(receiver.spans)
    agents = [s for s in all_spans if s["name"] == "invoke_agent Cursor"]
    assert sorted(s["attributes"]["gen_ai.conversation.id"] for s in agents) == ["conv-1", "conv-2"]
    agent1 = next(s for s in agents if s["attributes"]["gen_ai.conversation.id"] == "conv-1")
    assert t1["parent_span_id"] == agent1["span_id"] and t1["trace_id"] == agent1["trace_id"]
    assert spans["gen-2"]["parent_span_id"] == agent1["span_id"]
    tools = [s for s in all_spans if s["name"].startswith("execute_tool")]
    assert [(s["name"], s["attributes"]["gen_ai.tool.name"], s["attributes"]["gen_ai.tool.call.id"],
             s["parent_span_id"]) for s in tools] == [
        ("execute_tool read_file", "read_file", "call-7", t1["span_id"])]  # fmt: skip

    # The collector goes down: new turns wait; a revision of a sent turn sends nothing.
    receiver.down = True
    add(message("conv-1", "gen-1", "a2", "assistant", "It depends on the time zone (UTC).",
                tin=1500, tout=230, revision=1))  # fmt: skip
    add(message("conv-3", "gen-4", "a5", "assistant", "During the outage", tin=5, tout=5))
    add(message("conv-3", "gen-5", "a6", "assistant", "Still down", tin=6, tout=6))
    # hook events: of a turn the database saw too, of a hooks-only turn, of a sent turn
    add(hook("conv-3", "gen-4", "stop", status="completed", input_tokens=50, output_tokens=7))
    add(hook("conv-3", "gen-6", "afterAgentResponse", text="Hooks only", input_tokens=8,
             output_tokens=3))  # fmt: skip
    add(hook("conv-1", "gen-1", "stop", status="completed", input_tokens=1, output_tokens=1))
    wait_until(lambda: receiver.refused >= 2 and otlp_health(bp_env).get("counters", {}).get(
        "export_failures", 0) >= 1, timeout=20, what="failed exports in status")  # fmt: skip
    assert otlp_health(bp_env)["status"] == "collector_unavailable"
    # The server restarts while the collector is still down...
    proc.stop()
    server()
    wait_until(lambda: receiver.refused >= 4, timeout=20, what="retries after the restart")
    # ...then the collector is back: every turn arrives, and only once.
    receiver.down = False
    wait_until(lambda: {"gen-4", "gen-5", "gen-6"} <= {s["attributes"]["gen_ai.response.id"]
                                              for s in receiver.chat_spans()},
               timeout=20, what="the turns of the outage")  # fmt: skip
    wait_until(lambda: otlp_health(bp_env).get("status") == "ok", what="otlp ok again")
    ids = [s["attributes"]["gen_ai.response.id"] for s in receiver.chat_spans()]
    assert sorted(ids) == ["gen-1", "gen-2", "gen-3", "gen-4", "gen-5", "gen-6"]
    assert usage(receiver.of_turn("gen-4")[0])[:2] == (50, 7)  # the hook's, merged after restart
    assert receiver.of_turn("gen-4")[0]["attributes"]["blueplane.sources"] == ["database", "hook"]
    assert usage(receiver.of_turn("gen-6")[0])[:2] == (8, 3)
    # Every entry of the stream was acknowledged by the exporter's own group.
    group = next(g for g in redis_client.xinfo_groups("telemetry:events")
                 if g["name"] in (b"blueplane-otlp", "blueplane-otlp"))  # fmt: skip
    wait_until(lambda: next(g for g in redis_client.xinfo_groups("telemetry:events")
                            if g["name"] in (b"blueplane-otlp", "blueplane-otlp"))["pending"] == 0,
               what="nothing pending in the otlp group")  # fmt: skip
    assert group is not None
    wait_until(lambda: "gen_ai.client.token.usage" in receiver.metric_names, timeout=30,
               what="token metrics")  # fmt: skip


def test_text_stays_home_unless_capture_content(
    bp_env: BlueplaneEnv, server, receiver: Receiver, redis_client: sync_redis.Redis
) -> None:
    otlp_env(bp_env, receiver)
    bp_env.extra["BLUEPLANE_OTLP__CAPTURE_CONTENT"] = "false"
    server()
    redis_client.xadd("telemetry:events", message("c", "g", "u", "user", "secret prompt"))
    redis_client.xadd("telemetry:events", message("c", "g", "a", "assistant", "secret", tin=1,
                                                  tout=1))  # fmt: skip
    wait_until(lambda: receiver.chat_spans(), timeout=20, what="the chat span")
    attrs = receiver.chat_spans()[0]["attributes"]
    assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
    assert not any("secret" in str(v) for v in attrs.values())


# ----------------------------------------------------------------- turns seen by hooks
HOOK_CFG = {"capture_content": True, "redact_secrets": True}


def hook(conv: str, gen: str, name: str, **fields: Any) -> dict[str, str]:
    """The stream entry the hook command writes for one Cursor hook event."""
    event = {
        "conversation_id": conv, "session_id": conv, "generation_id": gen,
        "model": "claude-4.5-sonnet", "hook_event_name": name, "cursor_version": "3.7.19",
        "workspace_roots": ["/home/dev/proj"], "user_email": "dev@example.com",
        "transcript_path": None, **fields,
    }  # fmt: skip
    return build_fields(event, HOOK_CFG)


def usage(span: dict[str, Any]) -> tuple[Any, ...]:
    a = span["attributes"]
    return tuple(
        a.get(f"gen_ai.usage.{k}")
        for k in ("input_tokens", "output_tokens", "cache_read.input_tokens",
                  "cache_creation.input_tokens")
    )  # fmt: skip


def tool_spans(receiver: Receiver, chat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        s["attributes"]["gen_ai.tool.call.id"]: s
        for s in receiver.children(chat)
        if s["name"].startswith("execute_tool ")
    }


def otlp_pending(r: sync_redis.Redis) -> int:
    group = next(g for g in r.xinfo_groups("telemetry:events")
                 if g["name"] in (b"blueplane-otlp", "blueplane-otlp"))  # fmt: skip
    return int(group["pending"])


def test_turn_seen_by_database_and_hooks_is_one_span_with_the_hooks_tokens(
    bp_env: BlueplaneEnv, server, receiver: Receiver, redis_client: sync_redis.Redis
) -> None:
    otlp_env(bp_env, receiver)
    add = lambda fields: redis_client.xadd("telemetry:events", fields)  # noqa: E731
    server()
    conv, gen = "conv-dh", "gen-dh"
    now = int(time.time() * 1000)
    add(hook(conv, gen, "beforeSubmitPrompt", prompt="Why does checkout flake?"))
    add(message(conv, gen, "u1", "user", "Why does checkout flake?", at_ms=now))
    add(hook(conv, gen, "preToolUse", tool_name="read_file", tool_use_id="call-7",
             tool_input={"targetFile": "a.ts"}))  # fmt: skip
    add(hook(conv, gen, "postToolUse", tool_name="read_file", tool_use_id="call-7",
             tool_output="{}", duration=14))  # fmt: skip
    add(hook(conv, gen, "preToolUse", tool_name="run_terminal_cmd", tool_use_id="call-8",
             tool_input={"command": "npm test"}))  # fmt: skip
    add(hook(conv, gen, "postToolUseFailure", tool_name="run_terminal_cmd",
             tool_use_id="call-8", error_message="exit 1", failure_type="error",
             is_interrupt=False, duration=3100))  # fmt: skip
    add(
        hook(
            conv,
            gen,
            "afterAgentResponse",
            text="It depends on the time zone.",
            input_tokens=1200,
            output_tokens=85,
            cache_read_tokens=3000,
            cache_write_tokens=40,
        )
    )
    add(hook(conv, gen, "stop", status="completed", loop_count=0, input_tokens=1200,
             output_tokens=85, cache_read_tokens=3000, cache_write_tokens=40))  # fmt: skip
    # The database's bubble comes last (the monitor polls): no model, Cursor's own (wrong)
    # token counts, and the read_file call the hooks timed.
    add(
        message(
            conv,
            gen,
            "a1",
            "assistant",
            "It depends on the time zone.",
            model=None,
            tin=999,
            tout=9,
            at_ms=now + 100,
            tools=[{"name": "read_file", "tool_call_id": "call-7", "status": "completed"}],
        )
    )

    [chat] = wait_until(lambda: receiver.of_turn(gen), timeout=20, what="the turn's span")
    a = chat["attributes"]
    assert chat["name"] == "chat claude-4.5-sonnet"  # the hook's model: the database had none
    assert a["gen_ai.request.model"] == "claude-4.5-sonnet"
    assert usage(chat) == (1200, 85, 3000, 40)  # the hook's, counted once, not the bubble's
    assert a["blueplane.token_source"] == "afterAgentResponse"
    assert a["blueplane.sources"] == ["database", "hook"]
    assert a["gen_ai.conversation.id"] == conv
    assert a["blueplane.workspace_hash"] == workspace_hash("/home/dev/proj")
    assert json.loads(a["gen_ai.input.messages"])[0]["parts"][0]["content"] == (
        "Why does checkout flake?"
    )
    out = json.loads(a["gen_ai.output.messages"])[0]
    assert out["parts"][0]["content"] == "It depends on the time zone."
    assert out["finish_reason"] == "stop" and a["gen_ai.response.finish_reasons"] == ["stop"]
    # Both tool calls, one span each: read_file seen by both sources is merged.
    tools = wait_until(lambda: len(t := tool_spans(receiver, chat)) == 2 and t, what="tools")
    read, run = tools["call-7"], tools["call-8"]
    assert read["name"] == "execute_tool read_file"
    assert read["attributes"]["gen_ai.tool.name"] == "read_file"
    assert read["end_ns"] - read["start_ns"] == 14_000_000  # Cursor's own duration
    assert read["status"][0] == 0 and "error.type" not in read["attributes"]
    assert run["name"] == "execute_tool run_terminal_cmd"
    assert run["end_ns"] - run["start_ns"] == 3_100_000_000
    assert run["status"] == (2, "exit 1")  # STATUS_CODE_ERROR, the message with capture_content
    assert run["attributes"]["error.type"] == "error"
    assert chat["start_ns"] <= min(read["start_ns"], run["start_ns"])
    assert chat["end_ns"] >= max(read["end_ns"], run["end_ns"])

    # Later events of the sent turn send nothing; the next turn still goes out.
    add(hook(conv, gen, "stop", status="completed", input_tokens=1, output_tokens=1))
    add(message(conv, gen, "a1", "assistant", "It depends on the time zone (UTC).",
                revision=1, tin=999, tout=9, at_ms=now + 200))  # fmt: skip
    add(hook(conv, "gen-next", "afterAgentResponse", text="Next", input_tokens=5,
             output_tokens=6))  # fmt: skip
    wait_until(lambda: receiver.of_turn("gen-next"), timeout=20, what="the next turn")
    wait_until(lambda: otlp_pending(redis_client) == 0, what="every entry acknowledged")
    assert len(receiver.of_turn(gen)) == 1
    with receiver.lock:
        assert sum(s["name"].startswith("execute_tool") for s in receiver.spans) == 2


def test_hooks_only_turns_through_the_installed_hook_command(
    bp_env: BlueplaneEnv, server, receiver: Receiver, redis_client: sync_redis.Redis
) -> None:
    home = user_home(bp_env)
    workspace = bp_env.home.parent / "proj"
    workspace.mkdir()
    otlp_env(bp_env, receiver)
    bp_env.cli("hooks", "install")
    commands = installed_commands(home)
    server()
    events = recorded_events(workspace, bp_env.home.parent / "no-transcript.jsonl")
    for event in events:  # exactly as Cursor runs the hooks; no database, no transcript
        proc, _ = run_hook(commands[event["hook_event_name"]], event, home)
        assert proc.returncode == 0, proc.stderr
    chats = wait_until(lambda: len(c := receiver.chat_spans()) == 2 and c, timeout=20,
                       what="one span per turn")  # fmt: skip
    by_gen = {s["attributes"]["gen_ai.response.id"]: s for s in chats}
    t1, t2 = by_gen[G1], by_gen[G2]
    # exact tokens, once (afterAgentResponse and stop both carried them)
    assert usage(t1) == (1200, 85, 3000, 40)
    assert usage(t2) == (2500, 120, 0, 0)
    for span in (t1, t2):
        assert span["name"] == "chat claude-4.5-sonnet"
        assert span["attributes"]["blueplane.sources"] == ["hook"]
        assert span["attributes"]["gen_ai.conversation.id"] == CID
        assert span["attributes"]["blueplane.workspace_hash"] == workspace_hash(str(workspace))
    a1 = t1["attributes"]
    assert json.loads(a1["gen_ai.input.messages"])[0]["parts"][0]["content"] == (
        "tell me about this codebase"
    )
    assert json.loads(a1["gen_ai.output.messages"])[0]["parts"][0]["content"] == (
        "It is a small TypeScript app."
    )
    [read] = tool_spans(receiver, t1).values()
    assert (read["name"], read["attributes"]["gen_ai.tool.call.id"]) == (
        "execute_tool read_file", "toolu_01")  # fmt: skip
    assert read["end_ns"] - read["start_ns"] == 14_000_000 and read["status"][0] == 0
    [run] = tool_spans(receiver, t2).values()
    assert run["attributes"]["gen_ai.tool.name"] == "run_terminal_cmd"
    assert run["end_ns"] - run["start_ns"] == 3_100_000_000 and run["status"][0] == 2
    with receiver.lock:
        agents = [s for s in receiver.spans if s["name"] == "invoke_agent Cursor"]
    assert [s["attributes"]["gen_ai.conversation.id"] for s in agents] == [CID]
    assert t1["parent_span_id"] == t2["parent_span_id"] == agents[0]["span_id"]
    # sessionStart / sessionEnd (no generation) and every other event: acknowledged
    wait_until(lambda: otlp_pending(redis_client) == 0, what="every hook entry acknowledged")
    assert len(receiver.chat_spans()) == 2


def test_stop_tokens_when_after_agent_response_is_missing_never_summed(
    bp_env: BlueplaneEnv, server, receiver: Receiver, redis_client: sync_redis.Redis
) -> None:
    otlp_env(bp_env, receiver)
    add = lambda fields: redis_client.xadd("telemetry:events", fields)  # noqa: E731
    server()
    conv = "conv-stop"
    now = int(time.time() * 1000)
    # s1: afterAgentResponse never fired (an aborted turn): stop's counts, not the bubble's
    add(hook(conv, "s1", "beforeSubmitPrompt", prompt="refactor this"))
    add(message(conv, "s1", "b1", "assistant", "Partial", tin=999, tout=9, at_ms=now))
    add(hook(conv, "s1", "stop", status="aborted", loop_count=0, input_tokens=700,
             output_tokens=30, cache_read_tokens=100, cache_write_tokens=5))  # fmt: skip
    # s2: both fired with different counts: afterAgentResponse's, not the sum nor stop's
    add(hook(conv, "s2", "afterAgentResponse", text="Done", input_tokens=1200,
             output_tokens=85, cache_read_tokens=0, cache_write_tokens=0))  # fmt: skip
    add(hook(conv, "s2", "stop", status="completed", input_tokens=1300, output_tokens=90,
             cache_read_tokens=0, cache_write_tokens=0))  # fmt: skip
    # s3: no hook reported tokens: the database's bubble, and unknown counts stay absent
    add(hook(conv, "s3", "beforeSubmitPrompt", prompt="and now?", model="default"))
    add(message(conv, "s3", "b3", "assistant", "Now this.", tin=10, tout=2, at_ms=now,
                model="gpt-5"))  # fmt: skip
    spans = wait_until(
        lambda: {s["attributes"]["gen_ai.response.id"]: s for s in receiver.chat_spans()}
        if len(receiver.chat_spans()) >= 3 else None, timeout=20, what="three turns",
    )  # fmt: skip
    assert usage(spans["s1"]) == (700, 30, 100, 5)
    assert spans["s1"]["attributes"]["blueplane.token_source"] == "stop"
    assert spans["s1"]["attributes"]["gen_ai.response.finish_reasons"] == ["cancelled"]
    assert usage(spans["s2"]) == (1200, 85, 0, 0)
    assert spans["s2"]["attributes"]["blueplane.token_source"] == "afterAgentResponse"
    assert usage(spans["s3"]) == (10, 2, None, None)
    assert spans["s3"]["attributes"]["blueplane.token_source"] == "database"
    assert spans["s3"]["name"] == "chat gpt-5"  # the hook said "default" (Auto)
    wait_until(lambda: otlp_pending(redis_client) == 0, what="every entry acknowledged")
    assert len(receiver.chat_spans()) == 3
