"""The events on ``telemetry:events`` and their encoding to flat stream fields.

Stream entries are flat: dict and list values are JSON text, everything else plain text
(DESIGN.md §4). Session events are parsed exactly as the editor extension sends them.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TRACE_VERSION = "0.1.0"
SOURCE = "python_monitor"
SESSION_EVENT_TYPES = ("session_start", "session_end")


class MalformedEntry(ValueError):
    """A stream entry that cannot be understood; the message says why."""


def workspace_hash(workspace_path: str) -> str:
    """The extension's workspace id: ``sha256(path)[:16]`` in hex."""
    return hashlib.sha256(workspace_path.encode("utf-8")).hexdigest()[:16]


def normalise_workspace_path(path: str) -> str:
    """Absolute, ``~`` expanded, no trailing separator: the form the extension hashes."""
    p = os.path.abspath(os.path.expanduser(path))
    return p.rstrip("/\\") or p


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_ms(ms: int | float) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp (``Z`` or an offset)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


# --------------------------------------------------------------------------- trace payloads


class TracePayload(BaseModel):
    """Common fields of every ``payload`` of a ``database_trace``.

    ``generation_id`` names the item (the proposal's dedup key); ``item_id`` is set where one
    Cursor request yields several items (messages, prompts) so that each keeps its own id.
    """

    model_config = ConfigDict(extra="forbid")

    trace_type: str
    generation_id: str
    item_id: str | None = None
    revision: int | None = None
    source_layout: str | None = None

    def item_key(self) -> str:
        return self.item_id or self.generation_id

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class GenerationPayload(TracePayload):
    """One entry of ``aiService.generations`` (or a row of the proposal's v1 table)."""

    trace_type: Literal["generation"] = "generation"
    generation_type: str | None = None
    description: str | None = None
    generation_timestamp_ms: int | None = None
    prompt_text: str | None = None
    # How prompt_text was paired (absent when it was not): see README "Prompt pairing".
    prompt_pairing: str | None = None
    data_version: int | None = None


class PromptPayload(TracePayload):
    """One entry of ``aiService.prompts``: Cursor gives it neither an id nor a time.

    ``item_id`` is ``sha256(text)[:16]:<n>``, where n counts earlier prompts with the same text
    (stable across polls, see docs/trace-types.md); ``generation_id`` equals it.
    """

    trace_type: Literal["prompt"] = "prompt"
    text: str | None = None
    text_length: int = 0
    text_sha256: str | None = None
    command_type: int | None = None
    occurrence: int = 0
    array_index: int | None = None


class ComposerPayload(TracePayload):
    """A composer (conversation) or a legacy chat tab, created or changed.

    ``record`` says which Cursor record it comes from: ``full`` (global ``composerData:<id>``
    or a 2024 inline composer), ``head`` (2025 workspace entry), ``header`` (3.x
    ``composerHeaders`` row), ``chat_tab`` (legacy chat panel). Only ``full`` uses the bare
    composer id as ``item_id``; the others append ``:<record>``, so each record keeps its own
    revision sequence.
    """

    trace_type: Literal["composer"] = "composer"
    record: str
    composer_id: str
    name: str | None = None
    name_length: int | None = None
    mode: str | None = None
    unified_mode: str | None = None
    force_mode: str | None = None
    status: str | None = None
    lines_added: int | None = None
    lines_removed: int | None = None
    model_name: str | None = None
    max_mode: bool | None = None
    created_at_ms: int | None = None
    last_updated_at_ms: int | None = None
    context_tokens_used: int | None = None
    context_token_limit: int | None = None
    is_archived: bool | None = None
    is_subagent: bool | None = None
    message_count: int | None = None
    usage: dict[str, Any] | None = None
    workspace_storage_id: str | None = None
    format_version: int | None = None


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    status: str | None = None
    params: str | None = None
    params_length: int | None = None
    tool_call_id: str | None = None


class CodeBlocks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int
    languages: list[str] = Field(default_factory=list)


class MessagePayload(TracePayload):
    """One user or assistant bubble; ``item_id`` is the bubble id.

    ``generation_id`` is the bubble's ``requestId`` when Cursor recorded one (it equals the
    ``generationUUID`` of ``aiService.generations``), else the bubble id.
    """

    trace_type: Literal["message"] = "message"
    role: str
    bubble_type: str | None = None
    composer_id: str | None = None
    bubble_id: str
    request_id: str | None = None
    position: int | None = None
    text: str | None = None
    text_length: int = 0
    text_sha256: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_reported: bool | None = None
    created_at: str | None = None
    client_rpc_send_time_ms: int | None = None
    client_settle_time_ms: int | None = None
    client_end_time_ms: int | None = None
    client_start_uptime_ms: float | None = None
    thinking_text: str | None = None
    thinking_length: int | None = None
    thinking_duration_ms: int | None = None
    tool_calls: list[ToolCall] | None = None
    code_blocks: CodeBlocks | None = None
    settled_by: str | None = None


# --------------------------------------------------------------------------- envelopes


class TraceMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    workspace_hash: str
    source: str = SOURCE
    workspace_path: str | None = None
    database_path: str | None = None
    storage_id: str | None = None


class TraceEvent(BaseModel):
    """A ``database_trace`` event: the proposal's envelope plus a deterministic ``event_id``."""

    version: str = TRACE_VERSION
    event_type: Literal["database_trace"] = "database_trace"
    hook_type: Literal["DatabaseTrace"] = "DatabaseTrace"
    platform: Literal["cursor"] = "cursor"
    event_id: str
    session_id: str
    external_session_id: str
    timestamp: str
    metadata: TraceMetadata
    payload: dict[str, Any]

    @staticmethod
    def make_event_id(workspace_hash: str, dedup_id: str) -> str:
        """Same item, same id: the store's inserts are idempotent on it."""
        return hashlib.sha256(f"{workspace_hash}\x00{dedup_id}".encode()).hexdigest()[:32]

    def to_fields(self) -> dict[str, str]:
        return encode_fields(self.model_dump(mode="json", exclude_none=True))


class SessionPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    session_id: str = Field(min_length=1)
    workspace_path: str = ""
    workspace_hash: str = Field(min_length=1)


class SessionEvent(BaseModel):
    """``session_start`` / ``session_end`` exactly as the editor extension sends it."""

    event_type: Literal["session_start", "session_end"]
    hook_type: str = "session"
    platform: str = "cursor"
    timestamp: str = Field(default_factory=iso_now)
    payload: SessionPayload
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(cls, event_type: str, workspace_path: str, session_id: str) -> SessionEvent:
        path = normalise_workspace_path(workspace_path)
        h = workspace_hash(path)
        return cls(
            event_type=event_type,  # type: ignore[arg-type]
            payload=SessionPayload(session_id=session_id, workspace_path=path, workspace_hash=h),
            metadata={"workspace_hash": h, "source": "blueplane_cli"},
        )

    def to_fields(self) -> dict[str, str]:
        return encode_fields(self.model_dump(mode="json"))

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> SessionEvent:
        decoded = decode_fields(fields)
        metadata = decoded.get("metadata") or {}
        payload = decoded.get("payload")
        if not isinstance(payload, dict):
            raise MalformedEntry("session event has no JSON object in 'payload'")
        if not isinstance(metadata, dict):
            raise MalformedEntry("session event 'metadata' is not a JSON object")
        # The hash may travel in metadata only (older extension builds).
        payload = dict(payload)
        if not payload.get("workspace_hash") and metadata.get("workspace_hash"):
            payload["workspace_hash"] = metadata["workspace_hash"]
        if not payload.get("session_id") and metadata.get("session_id"):
            payload["session_id"] = metadata["session_id"]
        try:
            return cls.model_validate({**decoded, "payload": payload, "metadata": metadata})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise MalformedEntry(f"session event field '{where}': {first['msg']}") from exc


# --------------------------------------------------------------------------- field codec

_JSON_FIELDS = ("payload", "metadata")


def encode_fields(event: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in event.items():
        if isinstance(value, dict | list):
            out[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif value is None:
            continue
        else:
            out[key] = str(value)
    return out


def decode_fields(fields: dict[Any, Any]) -> dict[str, Any]:
    """Stream fields to a dict; ``payload``/``metadata`` parsed as JSON (strictly)."""
    out: dict[str, Any] = {}
    for raw_key, raw_value in fields.items():
        try:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = raw_value.decode() if isinstance(raw_value, bytes) else str(raw_value)
        except UnicodeDecodeError as exc:
            raise MalformedEntry(f"field is not UTF-8: {exc}") from exc
        if key in _JSON_FIELDS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise MalformedEntry(f"'{key}' is not valid JSON: {exc.msg} at {exc.pos}") from exc
        else:
            out[key] = value
    return out
