"""OTLP export against a real receiver on loopback: GenAI spans, exactly once per turn across a
collector outage and a restart of the server."""

from __future__ import annotations

import json
import threading
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
from tests.conftest import BlueplaneEnv, wait_until

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


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
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
    tools: list[dict] | None = None,
) -> dict[str, str]:  # fmt: skip
    n = next(_seq)
    payload: dict[str, Any] = {
        "trace_type": "message", "generation_id": gen, "item_id": bubble, "revision": revision,
        "role": role, "bubble_id": bubble, "composer_id": conv, "request_id": gen, "text": text,
        "text_length": len(text), "client_rpc_send_time_ms": 1_795_000_000_000 + n * 1000,
        "client_end_time_ms": 1_795_000_000_000 + n * 1000 + 700,
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
    # Turn 2 of conv-1 (its start sends turn 1), and turn 1 of conv-2.
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
    wait_until(lambda: receiver.refused >= 2 and otlp_health(bp_env).get("counters", {}).get(
        "export_failures", 0) >= 1, timeout=20, what="failed exports in status")  # fmt: skip
    assert otlp_health(bp_env)["status"] == "collector_unavailable"
    # The server restarts while the collector is still down...
    proc.stop()
    server()
    wait_until(lambda: receiver.refused >= 4, timeout=20, what="retries after the restart")
    # ...then the collector is back: every turn arrives, and only once.
    receiver.down = False
    wait_until(lambda: {"gen-4", "gen-5"} <= {s["attributes"]["gen_ai.response.id"]
                                              for s in receiver.chat_spans()},
               timeout=20, what="the turns of the outage")  # fmt: skip
    wait_until(lambda: otlp_health(bp_env).get("status") == "ok", what="otlp ok again")
    ids = [s["attributes"]["gen_ai.response.id"] for s in receiver.chat_spans()]
    assert sorted(ids) == ["gen-1", "gen-2", "gen-3", "gen-4", "gen-5"]
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
