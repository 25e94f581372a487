"""The envelopes on ``telemetry:events``: ``database_trace`` events (``TraceEvent``) and the
extension's ``session_start`` / ``session_end`` (``SessionEvent``, parsed exactly as sent)."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from blueplane.events.codec import MalformedEntry, decode_fields, encode_fields
from blueplane.events.times import iso_now
from blueplane.events.workspace_id import normalise_workspace_path, workspace_hash

TRACE_VERSION = "0.1.0"
SOURCE = "python_monitor"
SESSION_EVENT_TYPES = ("session_start", "session_end")


class TraceMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    workspace_hash: str
    source: str = SOURCE
    workspace_path: str | None = None
    database_path: str | None = None
    storage_id: str | None = None
    # Who produced it (machine.py): a team's central store tells developers apart by these.
    machine_id: str | None = None
    user: str | None = None


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
