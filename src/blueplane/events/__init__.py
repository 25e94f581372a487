"""The events on ``telemetry:events`` and their encoding to flat stream fields.

One concept per module: ``payloads`` (the trace payload schemas), ``envelope`` (trace and
session events), ``codec`` (flat stream fields), ``wire`` (payloads as their JSON fields, the
bulk path), ``times`` (timestamps) and ``workspace_id`` (the extension's workspace hash).
Everything is re-exported here.
"""

from __future__ import annotations

from blueplane.events.codec import MalformedEntry, decode_fields, encode_fields
from blueplane.events.envelope import (
    SESSION_EVENT_TYPES,
    SOURCE,
    TRACE_VERSION,
    SessionEvent,
    SessionPayload,
    TraceEvent,
    TraceMetadata,
)
from blueplane.events.payloads import (
    CodeBlocks,
    ComposerPayload,
    GenerationPayload,
    MessagePayload,
    PromptPayload,
    ToolCall,
    TracePayload,
    TranscriptPayload,
    TranscriptToolUse,
)
from blueplane.events.times import iso_from_ms, iso_now, parse_iso_ms
from blueplane.events.wire import WirePayload
from blueplane.events.workspace_id import normalise_workspace_path, workspace_hash

__all__ = [
    "SESSION_EVENT_TYPES", "SOURCE", "TRACE_VERSION", "CodeBlocks", "ComposerPayload",
    "GenerationPayload", "MalformedEntry", "MessagePayload", "PromptPayload", "SessionEvent",
    "SessionPayload", "ToolCall", "TraceEvent", "TraceMetadata", "TracePayload",
    "TranscriptPayload", "TranscriptToolUse", "WirePayload",
    "decode_fields", "encode_fields", "iso_from_ms", "iso_now", "normalise_workspace_path",
    "parse_iso_ms", "workspace_hash",
]  # fmt: skip
