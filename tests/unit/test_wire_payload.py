"""The bulk path (``WirePayload``) against the models it replaces on the hot path.

What it must keep: the stream entries byte for byte, the content hashes an earlier build stored
(or an upgrade would send every conversation again), and the timestamps. The earlier build's
code is kept here, frozen, as the reference: ``_model_message`` is its ``build_message`` and
``_model_hash`` its ``payload_hash``.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.cursor.layouts.base import ReadContext, TraceItem
from blueplane.cursor.layouts.conversation import (
    Revisions,
    _code_blocks,
    _model,
    _tokens,
    as_int,
    as_str,
    epoch_ms,
    iso_ms,
    legacy_payload_hash,
    payload_hash,
    role_of,
    text_parts,
    wire_message,
)
from blueplane.cursor.layouts.item_generations import _item as generation_item
from blueplane.cursor.layouts.item_generations import pair_prompt
from blueplane.events import (
    CodeBlocks,
    GenerationPayload,
    MessagePayload,
    ToolCall,
    WirePayload,
    times,
)
from blueplane.health import Health
from blueplane.keys import revision_key, watermark_key
from blueplane.publisher import TRACE_FIELDS, Destination, Publisher
from tests.fixtures.cursor_db import (
    make_assistant_bubble,
    make_generation,
    make_global_composer,
    make_user_bubble,
    make_workspace_identifier,
    now_ms,
)
from tests.unit.test_layouts_global_monitor import Rig

CTX = ReadContext(now_ms=now_ms(), sync_cutoff_ms=0)
NO_CONTENT = ReadContext(now_ms=now_ms(), sync_cutoff_ms=0, capture_content=False)
DEST = Destination("h1", "s1", workspace_path="/p ü", database_path="/g", storage_id="st")


# --------------------------------------------------------------------------- the earlier build


def _model_tool_calls(bubble: Mapping[str, Any], capture: bool) -> list[ToolCall] | None:
    raw = bubble.get("toolFormerData")
    entries = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    calls: list[ToolCall] = []
    for t in entries:
        if not isinstance(t, dict):
            continue
        params = t.get("params") if isinstance(t.get("params"), str) else None
        if params is None and isinstance(t.get("rawArgs"), str):
            params = t["rawArgs"]
        name = as_str(t.get("name"))
        if name is None and not t.get("toolCallId") and params is None:
            continue
        calls.append(
            ToolCall(
                name=name,
                status=as_str(t.get("status")),
                params=params if capture else None,
                params_length=len(params) if params is not None else None,
                tool_call_id=as_str(t.get("toolCallId")),
            )
        )
    return calls or None


def _model_message(
    bubble: Mapping[str, Any], bubble_id: str, ctx: ReadContext, position: int | None = None
) -> MessagePayload:
    """The earlier build's ``build_message`` (models all the way), for ``composer_id`` "c"."""
    capture = ctx.capture_content
    btype = bubble.get("type")
    text_value = bubble.get("text")
    if not (isinstance(text_value, str) and text_value) and isinstance(bubble.get("rawText"), str):
        text_value = bubble.get("rawText")
    text, length, digest = text_parts(text_value, capture)
    tin, tout, reported = _tokens(bubble.get("tokenCount"))
    timing = bubble.get("timingInfo") if isinstance(bubble.get("timingInfo"), dict) else {}
    assert isinstance(timing, dict)
    start = timing.get("clientStartTime")
    thinking = bubble.get("thinking")
    thinking_raw = thinking.get("text") if isinstance(thinking, dict) else None
    t_text, t_len, _ = text_parts(thinking_raw, capture)
    request_id = as_str(bubble.get("requestId"))
    created = bubble.get("createdAt")
    created_iso = created if isinstance(created, str) and iso_ms(created) is not None else None
    blocks = _code_blocks(bubble)
    return MessagePayload(
        generation_id=request_id or bubble_id, item_id=bubble_id, source_layout="disk_bubbles",
        role=role_of(btype), bubble_type=None if btype is None else str(btype), composer_id="c",
        bubble_id=bubble_id, request_id=request_id, position=position, text=text,
        text_length=length, text_sha256=digest, model=_model(bubble), input_tokens=tin,
        output_tokens=tout, tokens_reported=reported, created_at=created_iso,
        client_rpc_send_time_ms=epoch_ms(timing.get("clientRpcSendTime")),
        client_settle_time_ms=epoch_ms(timing.get("clientSettleTime")),
        client_end_time_ms=epoch_ms(timing.get("clientEndTime")),
        client_start_uptime_ms=float(start) if isinstance(start, int | float) else None,
        thinking_text=t_text, thinking_length=t_len or None,
        thinking_duration_ms=as_int(bubble.get("thinkingDurationMs")),
        tool_calls=_model_tool_calls(bubble, capture),
        code_blocks=CodeBlocks(**blocks) if blocks is not None else None,
    )  # fmt: skip


def _model_hash(payload: MessagePayload) -> str:
    """The earlier build's ``payload_hash``: pydantic's JSON without ``revision``."""
    text = payload.model_dump_json(exclude_none=True, exclude={"revision"})
    return "v" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]


def _wire(bubble: Mapping[str, Any], bubble_id: str, ctx: ReadContext = CTX) -> WirePayload:
    return wire_message(bubble, bubble_id=bubble_id, composer_id="c", ctx=ctx,
                        source_layout="disk_bubbles")  # fmt: skip


def _corpus() -> list[dict[str, Any]]:
    """Bubbles of every shape the layouts meet, with text that JSON encoders treat apart."""
    odd = 'q"b\\s/ tab\t nl\n cr\r \x00\x01\x1f \x7f é\u2028\u2029€𝄞😀 </script>'
    tool = {"toolCallId": "t1", "name": "edit", "status": "completed", "rawArgs": "{}"}
    return [
        make_user_bubble("explain this"),
        make_assistant_bubble("Done."),
        make_assistant_bubble(odd, thinking={"text": odd}, thinkingDurationMs=1.5),
        make_user_bubble("", rawText="from rawText"),
        make_assistant_bubble("x", toolFormerData=[tool, {"tool": 0}, "junk"], codeBlocks=[]),
        make_assistant_bubble("y", toolFormerData={"tool": 0}, codeBlocks=[{"languageId": ""}, 3]),
        make_assistant_bubble("z", tokenCount={"inputTokens": 0, "outputTokens": 0}),
        make_assistant_bubble("t", timingInfo={"clientStartTime": 12, "clientEndTime": 5}),
        make_assistant_bubble("u", timingInfo={"clientStartTime": 1e16, "clientRpcSendTime": "1"}),
        make_user_bubble("c", createdAt=1_700_000_000_123, type="1"),
        make_user_bubble("d", createdAt="not a time", type=None, modelType="gpt"),
        {"type": 7, "text": 5, "tokenCount": [], "timingInfo": None, "thinking": "x"},
        {},
    ]


# --------------------------------------------------------------------------- the payloads


@pytest.mark.parametrize("ctx", [CTX, NO_CONTENT], ids=["content", "no-content"])
def test_a_wire_message_is_the_models_json_byte_for_byte(ctx: ReadContext) -> None:
    for k, bubble in enumerate(_corpus()):
        old = _model_message(bubble, f"b{k}", ctx)
        wire = _wire(bubble, f"b{k}", ctx)
        # The fields are the model's own JSON form, in its order (no coercion on the way).
        expected = old.model_dump(mode="json", exclude_none=True)
        assert list(wire.fields.items()) == list(expected.items())
        assert wire.model() == old
        assert wire.json_text() == old.model_dump_json(exclude_none=True)
        for rev in (0, 3):
            stamped_old = old.model_copy(update={"revision": rev})
            stamped = wire.with_revision(rev)
            assert stamped.json_text() == stamped_old.model_dump_json(exclude_none=True)
            assert stamped.with_revision(rev + 1).revision == rev + 1
        settled = wire.replace(settled_by="quiet")
        assert settled.json_text() == old.model_copy(
            update={"settled_by": "quiet"}
        ).model_dump_json(exclude_none=True)
        assert settled.replace(text=None, settled_by="user").fields == old.model_copy(
            update={"text": None, "settled_by": "user"}
        ).model_dump(mode="json", exclude_none=True)


def test_content_hashes_are_those_an_earlier_build_stored() -> None:
    """Same input, same hash: the stored revision memories and pending entries still match,
    so an upgrade sends nothing again (and rewrites no memory)."""
    for k, bubble in enumerate(_corpus()):
        old, wire = _model_message(bubble, f"b{k}", CTX), _wire(bubble, f"b{k}", CTX)
        assert payload_hash(wire) == _model_hash(old) == payload_hash(old)
        assert payload_hash(wire.with_revision(2)) == payload_hash(wire)
        assert legacy_payload_hash(wire) == legacy_payload_hash(old)
        for stored in (_model_hash(old), legacy_payload_hash(old)):
            revs = Revisions({"m:b": [stored, 4]})
            assert revs.stamp("m:b", _wire(bubble, f"b{k}", CTX)) is None
            assert revs.entries["m:b"] == [_model_hash(old), 4]
        changed = Revisions({"m:b": [_model_hash(old), 4]}).stamp("m:b", wire.replace(position=9))
        assert changed is not None and changed.revision == 5


def test_the_stream_entry_is_the_earlier_builds_byte_for_byte() -> None:
    pub = Publisher(aioredis.Redis(), "s", dedup_window_s=60)  # never connects
    for k, bubble in enumerate(_corpus()):
        old = _model_message(bubble, f"b{k}", CTX).model_copy(update={"revision": 1})
        wire = _wire(bubble, f"b{k}", CTX).with_revision(1)
        for ts in (1_700_000_000_999, 5):
            got = dict(zip(TRACE_FIELDS, pub.event_values(DEST, TraceItem(wire, ts)), strict=True))
            assert got == pub.build_event(DEST, TraceItem(old, ts)).to_fields()
            assert TraceItem(wire, ts).dedup_id == TraceItem(old, ts).dedup_id


def test_a_wire_generation_is_the_models_json() -> None:
    prompts = ["explain the parser"]
    gens = [
        make_generation(1_700_000_000_000, "composer", "explain the parser"),
        make_generation(None, "apply", 'é "q"\n\x01 😀'),
        make_generation(5, "cmdk", None),
    ]
    for ctx in (CTX, NO_CONTENT):
        for g in gens:
            uid, ms = g["generationUUID"], as_int(g["unixMs"])
            item = generation_item(g, uid, ms, prompts, ctx)
            prompt = pair_prompt(as_str(g.get("type")), as_str(g.get("textDescription")), prompts)
            old = GenerationPayload(
                generation_id=uid,
                generation_type=as_str(g.get("type")),
                description=as_str(g.get("textDescription")) if ctx.capture_content else None,
                generation_timestamp_ms=ms,
                prompt_text=prompt if ctx.capture_content else None,
                prompt_pairing="exact_description_match" if prompt else None,
                source_layout="itemtable_generations",
            )
            assert isinstance(item.payload, WirePayload)
            assert item.payload.model() == old
            assert item.payload.json_text() == old.model_dump_json(exclude_none=True)
            assert item.payload.generation_timestamp_ms == old.generation_timestamp_ms


def test_what_orjson_cannot_encode_goes_through_the_model() -> None:
    """A lone surrogate (a broken file) is escaped as before; an integer over 64 bits is
    written as pydantic writes it. Neither fails the read."""
    lone = _wire(make_user_bubble("a", modelInfo={"modelName": "a\ud800b"}), "b")
    text = lone.json_text()
    text.encode("utf-8")  # what redis-py does with it
    assert json.loads(text)["model"] == "a\ud800b"
    assert payload_hash(lone).startswith("v")
    big = _wire(make_assistant_bubble("x", thinkingDurationMs=2**70), "b")
    assert big.json_text() == big.model().model_dump_json(exclude_none=True)
    assert '"thinking_duration_ms":1180591620717411303424' in big.json_text()


def test_orjson_and_pydantic_write_text_and_floats_alike() -> None:
    """What makes the bytes equal: every code point but the surrogates, and random floats."""
    cps = [*range(0x3000), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 61)]
    text = "".join(chr(c) for c in cps)
    rng = random.Random(7)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(5000)]
    floats += [0.0, -0.0, 1.0, 1e16, 1e-7, 4745281.3, 2.0**53, 1e300, 5e-324]
    for value in [text, *(f for f in floats if f == f and abs(f) != float("inf"))]:
        field = "text" if isinstance(value, str) else "client_start_uptime_ms"
        model = MessagePayload(generation_id="g", role="r", bubble_id="b", **{field: value})
        wire = WirePayload(MessagePayload, model.model_dump(mode="json", exclude_none=True))
        assert wire.json_text() == wire.model().model_dump_json(exclude_none=True)


# --------------------------------------------------------------------------- the times


def test_the_short_timestamp_paths_equal_the_datetime_ones() -> None:
    rng = random.Random(11)
    samples = [rng.randrange(0, 4_200_000_000_000) for _ in range(50_000)]
    samples += [*range(1_700_000_000_000, 1_700_000_005_000), 0, 999, 4_102_444_799_999]
    for ms in samples:
        iso = times._iso_from_ms(ms)
        assert times.iso_from_ms(ms) == iso
        assert times.parse_iso_ms(iso) == times._parse_iso_ms(iso)
    for ms in (-1, 1.5, 253_402_300_799_999):  # outside the short path: as before
        assert times.iso_from_ms(ms) == times._iso_from_ms(ms)
    assert times.parse_iso_ms("2024-01-01T00:00:00Z") == times._parse_iso_ms("2024-01-01T00:00:00Z")
    for bad in ("2024-02-30T00:00:00.000Z", "2024-01-01T00:00:00.1２3Z"):  # 2 is full-width
        for parse in (times.parse_iso_ms, times._parse_iso_ms):
            with pytest.raises(ValueError):
                parse(bad)


# --------------------------------------------------------------------------- an upgrade


@pytest.mark.parametrize("form", ["model_json", "sorted_json"])
async def test_an_existing_deployments_state_publishes_nothing_again(
    tmp_path: Path, client, form: str
) -> None:
    """Revision memories as an earlier build wrote them (the hash of the model's JSON, or the
    older sorted form) with its dedup keys: a restart that re-reads the whole global database
    (watermarks gone, session-start re-read too) sends nothing again."""
    rig = Rig(tmp_path, client)
    ws = rig.project("a")
    cid = "c"
    ident = make_workspace_identifier(ws.id, ws.folder_path or "")
    rig.glob.put_composer(make_global_composer([], composerId=cid, workspaceIdentifier=ident))
    corpus = _corpus()[:-2]  # the last two have no id
    for b in corpus:
        rig.glob.put_bubble(cid, b)
    await rig.sessions.load()
    await rig.start(ws, "s1")
    await rig.monitor.poll_once()
    await rig.monitor.poll_once()
    before = await client.xrange("telemetry:events")
    sent = [json.loads(f[b"payload"]) for _id, f in before if f[b"event_type"] == b"database_trace"]
    sent_ids = {p["bubble_id"] for p in sent if p["trace_type"] == "message"}
    bubbles = [b for b in corpus if b["bubbleId"] in sent_ids]
    assert len(bubbles) >= 8  # the one from 2023 is outside the sync window

    # The earlier build's memories, computed by its own (frozen) code from the same bubbles.
    db = str(rig.glob.path)
    for b in bubbles:
        old = _model_message(b, b["bubbleId"], CTX)
        # The layout sent it with the settle rule's reason (its hash covers that too).
        reason = next(p["settled_by"] for p in sent if p.get("bubble_id") == b["bubbleId"])
        old = old.model_copy(update={"settled_by": reason})
        h = _model_hash(old) if form == "model_json" else legacy_payload_hash(old)
        await client.set(revision_key(db, "disk_bubbles", f"m:{b['bubbleId']}"), json.dumps([h, 0]))
    await client.delete(watermark_key(db))  # read again from the start

    # A restarted server: the same files, sessions and Redis; nothing in memory.
    restarted = CursorDatabaseMonitor(
        rig.cfg, rig.sessions, rig.mapper, Publisher(client, "telemetry:events", 3600), Health()
    )
    await restarted.poll_once()
    await restarted.poll_once()
    after = await client.xrange("telemetry:events")
    assert len(after) == len(before), [json.loads(f[b"payload"]) for _i, f in after[len(before) :]]
    if form == "model_json":  # the same hash: not even the memories are written again
        for b in bubbles:
            raw = await client.get(revision_key(db, "disk_bubbles", f"m:{b['bubbleId']}"))
            old = _model_message(b, b["bubbleId"], CTX)
            reason = next(p["settled_by"] for p in sent if p.get("bubble_id") == b["bubbleId"])
            assert json.loads(raw)[0] == _model_hash(old.model_copy(update={"settled_by": reason}))
