"""OTLP export: each assistant turn as an OpenTelemetry GenAI span, exactly once.

Reads ``telemetry:events`` in its own consumer group (``otlp.group``) and builds each turn from
every source on the stream that knows its generation, joined on ``(conversation_id,
generation_id)`` with the rules of the store's reconciled conversations
(``conversation_index``): the database's assistant message traces (one or more bubbles per
request, and the user bubble before them) and the Cursor hook events of the generation
(``beforeSubmitPrompt``, ``afterAgentResponse``, ``stop``, ``preToolUse`` / ``postToolUse`` /
``postToolUseFailure``, …). Tokens come from ``afterAgentResponse``, else ``stop`` (never both
added), else the database; the model from the hook unless it says ``default`` (Auto), else the
database; text from the hook, else the database; tool calls are merged by their call id (the
hooks give their timing and outcome). A turn seen only by hooks is exported too.

A turn is sent once it has been quiet for ``settle_seconds``, so the late events of a turn seen
by several sources are merged into its one span. A turn is a span ``chat {model}``
(``gen_ai.operation.name=chat``, ``gen_ai.provider.name=cursor``, model, conversation id, token
usage), under one ``invoke_agent Cursor`` span per conversation, with a child
``execute_tool {name}`` span per tool call. Text goes out only with ``capture_content``.

Exactly once: the entries of a turn are acknowledged only after the collector answered 2xx,
so a collector that is down keeps them pending (retried with backoff; nothing is lost) and a
restart re-reads them. The keys of exported turns are kept in ``BLUEPLANE_HOME/
otlp_exported.db``, so a redelivered entry or a later revision of a sent turn sends nothing.
Span ids are derived from the turn key: if the process dies between the collector's answer and
that record, the one re-sent span carries the same ids. Token metrics
(``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``) are recorded for each
exported turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from blueplane import __version__
from blueplane.aio import Backoff, sleep_or_stop
from blueplane.broker import REDIS_DOWN
from blueplane.config import OtlpConfig
from blueplane.conversation_index import (
    DATABASE,
    HOOK,
    TOKEN_FIELDS,
    TOKEN_PRIORITY,
    _int,
    _str,
)
from blueplane.events import MalformedEntry
from blueplane.fast_path.consumer import group_stats, parse_entry
from blueplane.health import Health
from blueplane.store import StoredEvent

log = logging.getLogger("blueplane.otlp")

PROVIDER = "cursor"
SCOPE = "blueplane.otlp"
STATS_EVERY_S = 5.0


def _id(text: str, bits: int) -> int:
    """A stable, non-zero trace or span id from ``text``."""
    value = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[: bits // 4], 16)
    return value or 1


@dataclass(slots=True)
class Tool:
    """A tool call of the database's bubble (``tool_calls``)."""

    name: str
    call_id: str | None
    status: str | None


@dataclass(slots=True)
class Bubble:
    """The latest revision of one assistant message of a turn."""

    revision: int
    tokens: tuple[int | None, ...] | None  # None: the bubble reported no tokens
    text: str | None
    tools: list[Tool]


@dataclass(slots=True)
class ToolSpan:
    """One tool call of a turn, merged across sources by its call id: the database names it
    (and its status), the hooks time it (``preToolUse`` / ``postToolUse[Failure]``)."""

    name: str | None = None
    call_id: str | None = None
    db_status: str | None = None
    pre_ms: int | None = None
    post_ms: int | None = None
    duration_ms: int | None = None
    failed: bool | None = None  # None: no post* event; True: postToolUseFailure
    failure_type: str | None = None
    error_message: str | None = None

    @property
    def error(self) -> bool:
        if self.failed is not None:
            return self.failed
        return self.db_status in _DB_TOOL_ERRORS

    def bounds(self, start_ms: int | None, end_ms: int | None) -> tuple[int | None, int | None]:
        """(start, end): Cursor's own ``duration`` ending at the post event (the events' own
        times include the hook command's start-up), else the pre and post events' times, else
        the turn's."""
        end = self.post_ms
        start = self.pre_ms
        if end is not None and self.duration_ms is not None:
            start = end - self.duration_ms
        start = start if start is not None else start_ms
        end = end if end is not None else max(start or 0, end_ms or 0) or None
        return start, end


# The hook's stop status as a GenAI finish reason.
_FINISH = {"completed": "stop", "aborted": "cancelled"}
_DB_TOOL_ERRORS = frozenset({"error", "failed"})
_TOOL_HOOKS = ("preToolUse", "postToolUse", "postToolUseFailure")


def _tokens_of(payload: dict[str, Any]) -> tuple[int | None, ...] | None:
    """The four counts of a token report; None when it carries none (as the store's index)."""
    values = tuple(_int(payload.get(name)) for name in TOKEN_FIELDS)
    return None if all(v is None for v in values) else values


@dataclass(slots=True)
class Turn:
    """One assistant turn, gathered from every source on the stream and joined on
    ``(conversation_id, generation_id)`` like the store's ``conv_turns``: the database's
    assistant messages (and the prompt before them), and the hook events of the generation."""

    key: str
    conversation_id: str
    generation_id: str
    workspace_hash: str | None
    db_model: str | None = None
    hook_model: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    db_prompt: str | None = None
    hook_prompt: str | None = None
    stop_status: str | None = None
    bubbles: dict[str, Bubble] = field(default_factory=dict)
    # hook answers (afterAgentResponse) by event id: (time, text)
    hook_texts: dict[str, tuple[int, str]] = field(default_factory=dict)
    # token reports by kind (TOKEN_PRIORITY's hook kinds), by event id
    hook_tokens: dict[str, dict[str, tuple[int | None, ...]]] = field(default_factory=dict)
    hook_tools: dict[str, ToolSpan] = field(default_factory=dict)
    hook_events: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    entry_ids: list[str] = field(default_factory=list)
    touched: float = 0.0

    def _time(self, start: Any, end: Any) -> None:
        if isinstance(start, int) and not isinstance(start, bool):
            self.start_ms = start if self.start_ms is None else min(self.start_ms, start)
        if isinstance(end, int) and not isinstance(end, bool):
            self.end_ms = end if self.end_ms is None else max(self.end_ms, end)

    def add(self, ev: StoredEvent, now: float) -> None:
        """A database message of the turn; a later revision replaces the earlier one."""
        p = ev.payload
        self.touched = now
        self.sources.add(DATABASE)
        bubble = str(p.get("bubble_id") or ev.item_key or ev.event_id)
        old = self.bubbles.get(bubble)
        if old is None or ev.revision >= old.revision:
            # As the store: a bubble's counts only when Cursor reported some (not its {0,0}).
            tokens = _tokens_of(p) if p.get("tokens_reported") else None
            if tokens is None and old is not None:
                tokens = old.tokens
            tools = [
                Tool(t["name"], t.get("tool_call_id"), t.get("status"))
                for t in p.get("tool_calls") or []
                if isinstance(t, dict) and t.get("name")
            ]
            text = str(p["text"]) if p.get("text") else None
            self.bubbles[bubble] = Bubble(ev.revision, tokens, text, tools)
        self.db_model = _str(p.get("model")) or self.db_model
        start = p.get("client_rpc_send_time_ms") or ev.timestamp_ms
        end = p.get("client_end_time_ms") or p.get("client_settle_time_ms") or ev.timestamp_ms
        self._time(start, end)

    def add_hook(self, ev: StoredEvent, now: float) -> None:
        """A Cursor hook event of the turn (the store's ``ConversationIndexer._hook`` rules)."""
        self.touched = now
        event_id = str(ev.event_id)
        if event_id in self.hook_events:
            return  # the same event twice on the stream: counted once
        self.hook_events.add(event_id)
        self.sources.add(HOOK)
        p, name, at = ev.payload, ev.event_type, ev.timestamp_ms
        self._time(at, at)
        if self.workspace_hash is None:
            self.workspace_hash = ev.workspace_hash
        model = _str(p.get("model"))
        if model:
            self.hook_model = model
        if name == "beforeSubmitPrompt":
            self.hook_prompt = _str(p.get("prompt")) or self.hook_prompt
        elif name == "afterAgentResponse":
            text = _str(p.get("text"))
            if text is not None:
                self.hook_texts[event_id] = (at or 0, text)
        elif name == "stop":
            self.stop_status = _str(p.get("status")) or self.stop_status
        if name in ("afterAgentResponse", "stop") and (tokens := _tokens_of(p)) is not None:
            self.hook_tokens.setdefault(name, {})[event_id] = tokens
        if name in _TOOL_HOOKS:
            self._hook_tool(name, p, at)

    def _hook_tool(self, name: str, p: dict[str, Any], at: int | None) -> None:
        call_id = _str(p.get("tool_use_id"))
        tool_name = _str(p.get("tool_name"))
        if call_id is not None:
            key = call_id
        elif name == "preToolUse":
            key = f"hook:{len(self.hook_tools)}"
        else:  # no id: the earliest unfinished call of the same tool
            open_calls = (
                k for k, t in self.hook_tools.items()
                if k.startswith("hook:") and t.name == tool_name and t.failed is None
            )  # fmt: skip
            key = next(open_calls, f"hook:{len(self.hook_tools)}")
        tool = self.hook_tools.setdefault(key, ToolSpan(call_id=call_id))
        tool.name = tool_name or tool.name
        if name == "preToolUse":
            tool.pre_ms = at
            return
        tool.post_ms = at
        tool.duration_ms = _int(p.get("duration"))
        tool.failed = name == "postToolUseFailure"
        if tool.failed:
            tool.failure_type = _str(p.get("failure_type")) or "error"
            tool.error_message = _str(p.get("error_message"))

    # ----------------------------------------------------------------- the reconciled turn
    @property
    def model(self) -> str | None:
        """As the store: the hook's model (``default`` is Auto: the database may know
        better), else the database's; the hook's ``default`` when no source names one."""
        if self.hook_model and self.hook_model != "default":
            return self.hook_model
        return self.db_model or self.hook_model

    @property
    def token_source(self) -> str | None:
        """The best token source (``TOKEN_PRIORITY``): afterAgentResponse, else stop, else the
        database; never two of them added."""
        for kind in TOKEN_PRIORITY:
            if kind == DATABASE:
                if any(b.tokens is not None for b in self.bubbles.values()):
                    return kind
            elif self.hook_tokens.get(kind):
                return kind
        return None

    @property
    def tokens(self) -> tuple[int | None, ...]:
        """The four counts from the best source, summed within it; None where unknown."""
        kind = self.token_source
        if kind is None:
            return (None, None, None, None)
        if kind == DATABASE:
            rows = [b.tokens for b in self.bubbles.values() if b.tokens is not None]
        else:
            rows = list(self.hook_tokens[kind].values())
        totals: list[int | None] = [None, None, None, None]
        for row in rows:
            for i, v in enumerate(row):
                if v is not None:
                    totals[i] = (totals[i] or 0) + v
        return tuple(totals)

    @property
    def input_tokens(self) -> int | None:
        return self.tokens[0]

    @property
    def output_tokens(self) -> int | None:
        return self.tokens[1]

    @property
    def cache_read_tokens(self) -> int | None:
        return self.tokens[2]

    @property
    def cache_write_tokens(self) -> int | None:
        return self.tokens[3]

    @property
    def prompt(self) -> str | None:
        """Content from whichever source has it, the hook first (``CONTENT_ORDER``)."""
        return self.hook_prompt or self.db_prompt

    @property
    def response(self) -> list[str]:
        hook = [text for _, text in sorted(self.hook_texts.values(), key=lambda x: x[0])]
        return hook or [b.text for b in self.bubbles.values() if b.text]

    @property
    def tools(self) -> list[ToolSpan]:
        """The database's tool calls and the hooks' in one list, one per call id."""
        merged: dict[str, ToolSpan] = {}
        for bubble, b in self.bubbles.items():
            for i, t in enumerate(b.tools):
                merged[t.call_id or f"db:{bubble}:{i}"] = ToolSpan(t.name, t.call_id, t.status)
        for key, h in self.hook_tools.items():
            m = merged.get(key)
            if m is None:
                merged[key] = h
                continue
            merged[key] = ToolSpan(
                h.name or m.name, m.call_id or h.call_id, m.db_status, h.pre_ms, h.post_ms,
                h.duration_ms, h.failed, h.failure_type, h.error_message,
            )  # fmt: skip
        return list(merged.values())


class ExportedKeys:
    """The turns (and conversation spans) already accepted by the collector, on disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Our own small file (BLUEPLANE_HOME/otlp_exported.db), one writer: the default
        # rollback journal is enough, and no PRAGMA is needed.
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS exported (key TEXT PRIMARY KEY, exported_at_ms INTEGER)"
        )

    def has(self, key: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM exported WHERE key = ?", (key,)).fetchone() is not None
        )

    def add(self, keys: Sequence[str]) -> None:
        now = int(time.time() * 1000)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT OR IGNORE INTO exported VALUES (?, ?)", [(k, now) for k in keys]
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class SpanSender:
    """Builds the spans of finished turns and sends them with the OTLP/HTTP exporter."""

    def __init__(self, cfg: OtlpConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.cfg = cfg
        base = cfg.endpoint.rstrip("/") if cfg.endpoint else None
        headers = dict(cfg.headers) or None
        self.exporter = OTLPSpanExporter(
            endpoint=f"{base}/v1/traces" if base else None, headers=headers,
            timeout=cfg.timeout_seconds,
        )  # fmt: skip
        self.resource = Resource.create({"service.name": "blueplane-monitor",
                                         "service.version": __version__})  # fmt: skip
        self.scope = InstrumentationScope(SCOPE, __version__)
        self.meters: Any = None
        if cfg.metrics:
            self._metrics(base, headers)

    def _metrics(self, base: str | None, headers: dict[str, str] | None) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        exporter = OTLPMetricExporter(
            endpoint=f"{base}/v1/metrics" if base else None, headers=headers,
            timeout=self.cfg.timeout_seconds,
        )  # fmt: skip
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=10_000)
        self.provider = MeterProvider(resource=self.resource, metric_readers=[reader])
        meter = self.provider.get_meter(SCOPE, __version__)
        self.meters = (
            meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                   description="Tokens used per assistant turn"),
            meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                   description="Duration of an assistant turn"),
        )  # fmt: skip

    def spans(self, turns: Sequence[Turn], new_conversations: set[str]) -> list[Any]:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        out: list[Any] = []

        def ctx(trace_id: int, span_id: int) -> SpanContext:
            return SpanContext(trace_id, span_id, is_remote=False,
                               trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip

        for t in turns:
            trace_id = _id(f"conversation:{t.conversation_id}", 128)
            agent = ctx(trace_id, _id(f"agent:{t.conversation_id}", 64))
            tools = [(tool, *tool.bounds(t.start_ms, t.end_ms)) for tool in t.tools]
            starts = [s for s in [t.start_ms, *(b[1] for b in tools)] if s is not None]
            ends = [e for e in [t.end_ms, *(b[2] for b in tools)] if e is not None]
            start = (min(starts) if starts else int(time.time() * 1000)) * 1_000_000
            end = max(start, (max(ends) if ends else 0) * 1_000_000)
            common = {
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.conversation.id": t.conversation_id,
            }
            if t.conversation_id in new_conversations:
                new_conversations.discard(t.conversation_id)
                out.append(ReadableSpan(
                    "invoke_agent Cursor", context=agent, parent=None, resource=self.resource,
                    attributes={**common, "gen_ai.operation.name": "invoke_agent",
                                "gen_ai.agent.name": "Cursor"},
                    kind=SpanKind.CLIENT, start_time=start, end_time=end,
                    instrumentation_scope=self.scope,
                ))  # fmt: skip
            attrs: dict[str, Any] = {**common, "gen_ai.operation.name": "chat",
                                     "gen_ai.response.id": t.generation_id}  # fmt: skip
            if t.model:
                attrs["gen_ai.request.model"] = t.model
                attrs["gen_ai.response.model"] = t.model
            for name, value in (
                ("gen_ai.usage.input_tokens", t.input_tokens),
                ("gen_ai.usage.output_tokens", t.output_tokens),
                ("gen_ai.usage.cache_read.input_tokens", t.cache_read_tokens),
                ("gen_ai.usage.cache_creation.input_tokens", t.cache_write_tokens),
            ):
                if value is not None:
                    attrs[name] = value
            if t.workspace_hash:
                attrs["blueplane.workspace_hash"] = t.workspace_hash
            attrs["blueplane.sources"] = sorted(t.sources)
            if t.token_source:
                attrs["blueplane.token_source"] = t.token_source
            if t.stop_status:
                attrs["gen_ai.response.finish_reasons"] = [_FINISH.get(t.stop_status,
                                                                       t.stop_status)]  # fmt: skip
            if self.cfg.capture_content:
                if t.prompt:
                    attrs["gen_ai.input.messages"] = json.dumps(
                        [{"role": "user", "parts": [{"type": "text", "content": t.prompt}]}],
                        ensure_ascii=False,
                    )
                if t.response:
                    attrs["gen_ai.output.messages"] = json.dumps(
                        [{"role": "assistant",
                          "finish_reason": _FINISH.get(t.stop_status or "completed",
                                                       t.stop_status),
                          "parts": [{"type": "text", "content": "\n\n".join(t.response)}]}],
                        ensure_ascii=False,
                    )  # fmt: skip
            chat = ctx(trace_id, _id(f"turn:{t.key}", 64))
            out.append(ReadableSpan(
                f"chat {t.model or 'unknown'}", context=chat, parent=agent,
                resource=self.resource, attributes=attrs, kind=SpanKind.CLIENT,
                start_time=start, end_time=end, instrumentation_scope=self.scope,
                status=Status(StatusCode.ERROR, "the agent stopped with an error")
                if t.stop_status == "error" else Status(StatusCode.UNSET),
            ))  # fmt: skip
            for i, (tool, tstart, tend) in enumerate(tools):
                name = tool.name or "unknown"
                tattrs = {**common, "gen_ai.operation.name": "execute_tool",
                          "gen_ai.tool.name": name}  # fmt: skip
                if tool.call_id:
                    tattrs["gen_ai.tool.call.id"] = tool.call_id
                status = Status(StatusCode.UNSET)
                if tool.error:
                    tattrs["error.type"] = tool.failure_type or tool.db_status or "error"
                    why = tool.error_message if self.cfg.capture_content else None
                    status = Status(StatusCode.ERROR, why or tattrs["error.type"])
                ts = (tstart or 0) * 1_000_000 or start
                te = max(ts, (tend or 0) * 1_000_000 or end)
                tool_ctx = ctx(trace_id, _id(f"tool:{t.key}:{tool.call_id or i}", 64))
                out.append(ReadableSpan(
                    f"execute_tool {name}", context=tool_ctx,
                    parent=chat, resource=self.resource, attributes=tattrs,
                    kind=SpanKind.INTERNAL, start_time=ts, end_time=te,
                    instrumentation_scope=self.scope, status=status,
                ))  # fmt: skip
        return out

    def send(self, spans: list[Any]) -> bool:
        """True when the collector answered 2xx (blocking: run in a thread)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        return self.exporter.export(spans) == SpanExportResult.SUCCESS

    def record_metrics(self, turns: Sequence[Turn]) -> None:
        if self.meters is None:
            return
        tokens, duration = self.meters
        for t in turns:
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                     "gen_ai.request.model": t.model or "unknown"}  # fmt: skip
            if t.input_tokens is not None:
                tokens.record(t.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            if t.output_tokens is not None:
                tokens.record(t.output_tokens, {**attrs, "gen_ai.token.type": "output"})
            if t.start_ms is not None and t.end_ms is not None:
                duration.record(max(0, t.end_ms - t.start_ms) / 1000, attrs)

    def shutdown(self) -> None:
        self.exporter.shutdown()
        if self.meters is not None:
            self.provider.shutdown()


class OtlpExporter:
    """The component: stream → turns → spans → collector; acknowledges what was accepted."""

    def __init__(
        self, redis: Redis, cfg: OtlpConfig, stream: str, state_path: Path, health: Health,
        sender: SpanSender | None = None,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.cfg = cfg
        self.stream = stream
        self.health = health.component("otlp")
        self.state_path = state_path
        self.sender = sender
        self.open: dict[str, Turn] = {}
        # conversation -> (its latest prompt, the entries holding it, when seen)
        self.prompts: dict[str, tuple[str | None, list[str], float]] = {}
        self.ready: list[Turn] = []
        self.to_ack: list[str] = []
        self._drained = False
        self._cursor = "0"
        self._last_stats = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self.keys = ExportedKeys(self.state_path)
        if self.sender is None:
            self.sender = SpanSender(self.cfg)
        backoff = Backoff(self.cfg.retry_initial_seconds, self.cfg.retry_max_seconds)
        group_ready = False
        log.info("OTLP export on: %s", self.cfg.endpoint or "the OTEL_EXPORTER_OTLP_* variables")
        try:
            while not stop.is_set():
                try:
                    if not group_ready:
                        await self._ensure_group()
                        group_ready = True
                    await self._read()
                    self._settle(time.monotonic())
                    if self.ready and not await self._send():
                        delay = backoff.next()
                        log.warning("OTLP: collector did not accept %d turn(s); retrying in "
                                    "%.0f s", len(self.ready), delay)  # fmt: skip
                        await sleep_or_stop(stop, delay)
                        continue
                    backoff.reset()
                    await self._ack()
                    await self._stats()
                except REDIS_DOWN as exc:
                    self.health.fail("redis_unavailable", f"Redis unavailable: {exc}")
                    group_ready = False
                    self._forget()
                    await sleep_or_stop(stop, backoff.next())
                except ResponseError as exc:
                    group_ready = False
                    self._forget()
                    if "NOGROUP" not in str(exc):
                        self.health.fail("redis_error", f"Redis refused a command: {exc}")
                        await sleep_or_stop(stop, backoff.next())
        finally:
            await asyncio.to_thread(self.sender.shutdown)
            self.keys.close()

    def _forget(self) -> None:
        """Unacknowledged entries are re-read from the group: drop what was gathered."""
        self._drained, self._cursor = False, "0"
        self.open.clear()
        self.prompts.clear()
        self.ready.clear()

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.cfg.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.cfg.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self) -> None:
        """Our pending entries first (after a start: paged by id, as they stay pending until
        their turn is sent), then new ones."""
        if self._drained:
            start = ">"
            block = self.cfg.block_ms
            if self.open:
                block = min(block, int(self.cfg.settle_seconds * 1000))
        else:
            start, block = self._cursor, None
        resp = await self.redis.xreadgroup(
            self.cfg.group, self.cfg.consumer, {self.stream: start},
            count=self.cfg.batch_size, block=block,
        )  # fmt: skip
        entries = resp[0][1] if resp else []
        if not self._drained:
            if entries:
                last = entries[-1][0]
                self._cursor = last.decode() if isinstance(last, bytes) else str(last)
            else:
                self._drained = True
        now = time.monotonic()
        for sid, fields in entries:
            sid_text = sid.decode() if isinstance(sid, bytes) else str(sid)
            if not fields:  # deleted (trimmed) while pending
                self.to_ack.append(sid_text)
                continue
            try:
                ev = parse_entry(sid_text, fields)
            except MalformedEntry:
                self.to_ack.append(sid_text)  # the fast path dead-letters it, with the cause
                continue
            self._take(sid_text, ev, now)

    def _take(self, sid: str, ev: StoredEvent, now: float) -> None:
        if ev.hook_type == "CursorHook":
            self._take_hook(sid, ev, now)
            return
        p = ev.payload
        if ev.event_type != "database_trace" or ev.trace_type != "message":
            self.to_ack.append(sid)
            return
        conv = p.get("composer_id") or ev.session_id or ""
        role = p.get("role")
        if role == "user":
            text = p.get("text") if isinstance(p.get("text"), str) else None
            _, ids, _ = self.prompts.get(conv, (None, [], now))
            self.prompts[conv] = (text, [*ids, sid], now)
            return
        if role != "assistant":
            self.to_ack.append(sid)
            return
        gen = ev.generation_id or p.get("request_id") or p.get("bubble_id") or ev.event_id
        turn = self._turn(sid, conv, str(gen), ev.workspace_hash)
        if turn is None:
            return
        if DATABASE not in turn.sources:
            # The database's prompt is the user bubble before the turn's first answer.
            prompt, ids, _ = self.prompts.pop(conv, (None, [], now))
            turn.db_prompt = prompt
            turn.entry_ids.extend(ids)
        turn.entry_ids.append(sid)
        turn.add(ev, now)

    def _take_hook(self, sid: str, ev: StoredEvent, now: float) -> None:
        """A hook event joins the turn of its (conversation_id, generation_id), as in the
        store; one without a generation (sessionStart, sessionEnd) is no turn's."""
        meta, p = ev.metadata, ev.payload
        conv = _str(meta.get("conversation_id")) or _str(p.get("conversation_id"))
        gen = _str(meta.get("generation_id")) or _str(p.get("generation_id"))
        if conv is None or gen is None:
            self.to_ack.append(sid)
            return
        turn = self._turn(sid, conv, gen, ev.workspace_hash)
        if turn is None:
            return
        turn.entry_ids.append(sid)
        turn.add_hook(ev, now)

    def _turn(self, sid: str, conv: str, gen: str, workspace: str | None) -> Turn | None:
        """The open turn of ``conv:gen`` (new if need be); None (the entry acknowledged) when
        that turn was already sent: a revision, a late event or a redelivery sends nothing."""
        key = f"{conv}:{gen}"
        turn = self.open.get(key)
        if turn is not None:
            return turn
        if self.keys.has(key):
            self.to_ack.append(sid)
            return None
        turn = self.open[key] = Turn(key, conv, gen, workspace)
        return turn

    def _settle(self, now: float) -> None:
        # A turn is sent after it was quiet for the settle window, whatever its conversation
        # does meanwhile: a database bubble or a hook event of it may still arrive late.
        for key in [k for k, t in self.open.items() if now - t.touched >= self.cfg.settle_seconds]:
            self.ready.append(self.open.pop(key))
        # A prompt no answer followed (a cancelled request): let its entries go.
        for conv in [c for c, (_, _, seen) in self.prompts.items()
                     if now - seen >= 6 * self.cfg.settle_seconds]:  # fmt: skip
            self.to_ack.extend(self.prompts.pop(conv)[1])
        self.health.set_counter("open_turns", len(self.open))

    async def _send(self) -> bool:
        assert self.sender is not None
        turns = self.ready
        new_convs = {t.conversation_id for t in turns
                     if not self.keys.has(f"agent:{t.conversation_id}")}  # fmt: skip
        spans = self.sender.spans(turns, set(new_convs))
        try:
            ok = await asyncio.to_thread(self.sender.send, spans)
        except Exception as exc:  # noqa: BLE001 (the exporter's transport: anything is "not sent")
            log.warning("OTLP: export raised %r", exc)
            ok = False
        if not ok:
            self.health.count("export_failures")
            why = f"collector did not accept {len(spans)} span(s); retrying"
            self.health.fail("collector_unavailable", why)
            return False
        self.keys.add([t.key for t in turns] + [f"agent:{c}" for c in new_convs])
        self.sender.record_metrics(turns)
        for t in turns:
            self.to_ack.extend(t.entry_ids)
        self.health.count("turns_exported", len(turns))
        self.health.count("spans_exported", len(spans))
        self.health.status = "ok"
        self.health.last_error = None
        self.ready = []
        return True

    async def _ack(self) -> None:
        if self.to_ack:
            ids, self.to_ack = self.to_ack, []
            await self.redis.xack(self.stream, self.cfg.group, *ids)
        if self.health.status == "starting":
            self.health.status = "ok"

    async def _stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats < STATS_EVERY_S:
            return
        self._last_stats = now
        stats = await group_stats(self.redis, self.stream, self.cfg.group)
        for name in ("pending", "consumer_lag"):
            if stats.get(name) is not None:
                self.health.set_counter(name, int(stats[name] or 0))
