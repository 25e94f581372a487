"""OTLP export: each assistant turn as an OpenTelemetry GenAI span, exactly once.

Reads ``telemetry:events`` in its own consumer group (``otlp.group``). Assistant message traces
of one generation (Cursor writes one or more assistant bubbles per request) are gathered into
a turn; the turn is sent once the next turn of its conversation starts or it has been quiet
for ``settle_seconds``. A turn is a span ``chat {model}`` (``gen_ai.operation.name=chat``,
``gen_ai.provider.name=cursor``, model, conversation id, token usage), under one
``invoke_agent Cursor`` span per conversation, with a child ``execute_tool {name}`` span per
tool call. Text goes out only with ``capture_content``.

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
    name: str
    call_id: str | None
    status: str | None


_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(slots=True)
class Bubble:
    """The latest revision of one assistant message of a turn."""

    revision: int
    tokens: tuple[int | None, ...]
    text: str | None
    tools: list[Tool]


@dataclass(slots=True)
class Turn:
    """One assistant turn being gathered from its messages (and the prompt before it)."""

    key: str
    conversation_id: str
    generation_id: str
    workspace_hash: str | None
    model: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    prompt: str | None = None
    bubbles: dict[str, Bubble] = field(default_factory=dict)
    entry_ids: list[str] = field(default_factory=list)
    touched: float = 0.0

    def add(self, ev: StoredEvent, now: float) -> None:
        """A message of the turn; a later revision of a message replaces the earlier one."""
        p = ev.payload
        self.touched = now
        bubble = str(p.get("bubble_id") or ev.item_key or ev.event_id)
        old = self.bubbles.get(bubble)
        if old is None or ev.revision >= old.revision:
            tokens = tuple(
                v if isinstance(v := p.get(name), int) and not isinstance(v, bool) else None
                for name in _TOKENS
            )
            tools = [
                Tool(t["name"], t.get("tool_call_id"), t.get("status"))
                for t in p.get("tool_calls") or []
                if isinstance(t, dict) and t.get("name")
            ]
            text = str(p["text"]) if p.get("text") else None
            self.bubbles[bubble] = Bubble(ev.revision, tokens, text, tools)
        self.model = p.get("model") or self.model
        start = p.get("client_rpc_send_time_ms") or ev.timestamp_ms
        end = p.get("client_end_time_ms") or p.get("client_settle_time_ms") or ev.timestamp_ms
        if isinstance(start, int):
            self.start_ms = start if self.start_ms is None else min(self.start_ms, start)
        if isinstance(end, int):
            self.end_ms = end if self.end_ms is None else max(self.end_ms, end)

    def _sum(self, i: int) -> int | None:
        known = [b.tokens[i] for b in self.bubbles.values() if b.tokens[i] is not None]
        return sum(known) if known else None  # type: ignore[arg-type]

    @property
    def input_tokens(self) -> int | None:
        return self._sum(0)

    @property
    def output_tokens(self) -> int | None:
        return self._sum(1)

    @property
    def cache_read_tokens(self) -> int | None:
        return self._sum(2)

    @property
    def cache_write_tokens(self) -> int | None:
        return self._sum(3)

    @property
    def response(self) -> list[str]:
        return [b.text for b in self.bubbles.values() if b.text]

    @property
    def tools(self) -> list[Tool]:
        return [t for b in self.bubbles.values() for t in b.tools]


class ExportedKeys:
    """The turns (and conversation spans) already accepted by the collector, on disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
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
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

        out: list[Any] = []

        def ctx(trace_id: int, span_id: int) -> SpanContext:
            return SpanContext(trace_id, span_id, is_remote=False,
                               trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip

        for t in turns:
            trace_id = _id(f"conversation:{t.conversation_id}", 128)
            agent = ctx(trace_id, _id(f"agent:{t.conversation_id}", 64))
            start = (t.start_ms or int(time.time() * 1000)) * 1_000_000
            end = max(start, (t.end_ms or t.start_ms or 0) * 1_000_000)
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
            if self.cfg.capture_content:
                if t.prompt:
                    attrs["gen_ai.input.messages"] = json.dumps(
                        [{"role": "user", "parts": [{"type": "text", "content": t.prompt}]}],
                        ensure_ascii=False,
                    )
                if t.response:
                    attrs["gen_ai.output.messages"] = json.dumps(
                        [{"role": "assistant", "finish_reason": "stop",
                          "parts": [{"type": "text", "content": "\n\n".join(t.response)}]}],
                        ensure_ascii=False,
                    )  # fmt: skip
            chat = ctx(trace_id, _id(f"turn:{t.key}", 64))
            out.append(ReadableSpan(
                f"chat {t.model or 'unknown'}", context=chat, parent=agent,
                resource=self.resource, attributes=attrs, kind=SpanKind.CLIENT,
                start_time=start, end_time=end, instrumentation_scope=self.scope,
            ))  # fmt: skip
            for i, tool in enumerate(t.tools):
                tattrs = {**common, "gen_ai.operation.name": "execute_tool",
                          "gen_ai.tool.name": tool.name}  # fmt: skip
                if tool.call_id:
                    tattrs["gen_ai.tool.call.id"] = tool.call_id
                tool_ctx = ctx(trace_id, _id(f"tool:{t.key}:{i}", 64))
                out.append(ReadableSpan(
                    f"execute_tool {tool.name}", context=tool_ctx,
                    parent=chat, resource=self.resource, attributes=tattrs,
                    kind=SpanKind.INTERNAL, start_time=start, end_time=end,
                    instrumentation_scope=self.scope,
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
        self.current: dict[str, str] = {}  # conversation -> key of its open turn
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
        self.current.clear()
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
        key = f"{conv}:{gen}"
        if self.keys.has(key):
            self.to_ack.append(sid)  # a revision or a redelivery of a turn already sent
            return
        previous = self.current.get(conv)
        if previous is not None and previous != key and previous in self.open:
            self.ready.append(self.open.pop(previous))  # the conversation moved on
        turn = self.open.get(key)
        if turn is None:
            turn = Turn(key, conv, gen, ev.workspace_hash)
            prompt, ids, _ = self.prompts.pop(conv, (None, [], now))
            turn.prompt, turn.entry_ids = prompt, list(ids)
            self.open[key] = turn
            self.current[conv] = key
        turn.entry_ids.append(sid)
        turn.add(ev, now)

    def _settle(self, now: float) -> None:
        for key in [k for k, t in self.open.items() if now - t.touched >= self.cfg.settle_seconds]:
            turn = self.open.pop(key)
            if self.current.get(turn.conversation_id) == key:
                del self.current[turn.conversation_id]
            self.ready.append(turn)
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
