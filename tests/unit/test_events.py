"""Stream encoding of events, and session events parsed exactly as the extension sends them."""

from __future__ import annotations

import hashlib
import json

import pytest

from blueplane.events import (
    GenerationPayload,
    MalformedEntry,
    SessionEvent,
    TraceEvent,
    TraceMetadata,
    decode_fields,
    iso_from_ms,
    parse_iso_ms,
    workspace_hash,
)


def extension_fields(
    event_type: str = "session_start", **payload_over: object
) -> dict[bytes, bytes]:
    """What the TypeScript extension XADDs: flat fields, dicts as JSON text."""
    path = "/home/alice/code/demo"
    h = hashlib.sha256(path.encode()).hexdigest()[:16]
    payload = {"session_id": "abc-123", "workspace_path": path, "workspace_hash": h, **payload_over}
    fields = {
        "event_type": event_type,
        "hook_type": "session",
        "platform": "cursor",
        "timestamp": "2025-11-26T18:12:04.121Z",
        "payload": json.dumps(payload),
        "metadata": json.dumps({"workspace_hash": h, "extension_version": "0.3.1"}),
    }
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_workspace_hash_is_sha256_prefix() -> None:
    assert (
        workspace_hash("/home/alice/code/demo")
        == hashlib.sha256(b"/home/alice/code/demo").hexdigest()[:16]
    )


def test_session_event_from_extension_fields() -> None:
    ev = SessionEvent.from_fields(extension_fields())
    assert ev.event_type == "session_start"
    assert ev.payload.session_id == "abc-123"
    assert ev.payload.workspace_hash == workspace_hash("/home/alice/code/demo")
    assert ev.metadata["extension_version"] == "0.3.1"


def test_workspace_hash_only_in_metadata_is_accepted() -> None:
    fields = extension_fields()
    payload = json.loads(fields[b"payload"])
    del payload["workspace_hash"]
    fields[b"payload"] = json.dumps(payload).encode()
    assert SessionEvent.from_fields(fields).payload.workspace_hash == workspace_hash(
        "/home/alice/code/demo"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.update({b"payload": b"{not json"}), "'payload' is not valid JSON"),
        (lambda f: f.update({b"payload": b"[1,2]"}), "no JSON object in 'payload'"),
        (lambda f: f.update({b"payload": json.dumps({"workspace_hash": "x"}).encode()}),
         "payload.session_id"),
        (lambda f: f.update({b"metadata": b"7"}), "'metadata' is not a JSON object"),
        (lambda f: f.update({b"payload": json.dumps({"session_id": 5, "workspace_hash": "h"})
                             .encode()}), "payload.session_id"),
    ],
)  # fmt: skip
def test_malformed_session_events_say_why(mutate, message: str) -> None:
    fields = extension_fields()
    mutate(fields)
    with pytest.raises(MalformedEntry, match=message.replace("(", r"\(").replace(")", r"\)")):
        SessionEvent.from_fields(fields)


def test_cli_session_event_round_trips(tmp_path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    ev = SessionEvent.build("session_start", str(folder) + "/", "s1")
    assert ev.payload.workspace_path == str(folder)  # trailing slash dropped
    back = SessionEvent.from_fields({k.encode(): v.encode() for k, v in ev.to_fields().items()})
    assert back.payload == ev.payload
    assert back.metadata["workspace_hash"] == workspace_hash(str(folder))


def test_trace_event_encodes_flat_fields_with_json_dicts() -> None:
    payload = GenerationPayload(generation_id="g1", generation_type="composer",
                                generation_timestamp_ms=1742530949974)  # fmt: skip
    ev = TraceEvent(
        event_id=TraceEvent.make_event_id("h", "generation:g1:0"),
        session_id="s", external_session_id="s", timestamp=iso_from_ms(1742530949974),
        metadata=TraceMetadata(workspace_hash="h"), payload=payload.to_json_dict(),
    )  # fmt: skip
    fields = ev.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["event_type"] == "database_trace" and fields["hook_type"] == "DatabaseTrace"
    assert json.loads(fields["metadata"]) == {"workspace_hash": "h", "source": "python_monitor"}
    decoded = decode_fields(fields)
    assert decoded["payload"]["generation_id"] == "g1"
    assert "prompt_text" not in decoded["payload"]  # absent, never an invented empty string
    assert fields["timestamp"] == "2025-03-21T04:22:29.974Z"
    assert parse_iso_ms(fields["timestamp"]) == 1742530949974


def test_event_id_is_deterministic_and_distinct() -> None:
    a = TraceEvent.make_event_id("h1", "generation:g:0")
    assert a == TraceEvent.make_event_id("h1", "generation:g:0")
    assert a != TraceEvent.make_event_id("h2", "generation:g:0")
    assert a != TraceEvent.make_event_id("h1", "generation:g:1")
