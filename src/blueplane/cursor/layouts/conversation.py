"""Shared by every conversation layout: bubble → ``message``, composer → ``composer``, revisions.

Cursor stores the same kinds of records (bubbles, composers) in several layouts; building
their payloads in one place keeps the fields identical whichever era they come from.

Revisions: a layout remembers, in its watermark, a short content hash and the revision last
emitted for each item (bounded, oldest forgotten first). An item whose payload hash is
unchanged is not emitted again; a changed one is emitted with ``revision + 1``. The hash covers
the payload as sent (without ``revision``), so Cursor rewriting a record without changing what
we send does not make a new revision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from blueplane.cursor.layouts.base import ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.jsonvalue import as_int, as_str
from blueplane.events import ComposerPayload, MessagePayload, TracePayload, parse_iso_ms
from blueplane.events.wire import WirePayload, model_json

# A payload as the layouts build it: a model, or its JSON fields (the bulk path's messages).
Payload = TypeVar("Payload", TracePayload, WirePayload)

# Items whose last revision a layout remembers; older ones fall out first.
SENT_CAP = 10_000
# Watermark key: when true, ``extract`` re-emits unchanged items at their current revision
# (used for the targeted re-read of a workspace whose session just started).
REPLAY = "replay"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# A hash of the current form starts with this (an older one is 16 hex digits).
HASH_PREFIX = "v"


def payload_hash(payload: TracePayload | WirePayload) -> str:
    """Hash of what is sent (revision excluded): an unchanged item keeps its hash.

    The model's own JSON in field order, hashed as the bytes ``WirePayload`` also sends (the
    first sync hashes every item, so it is serialised once for both). Hashes stored before
    this form are recognised by ``same_payload``, so an upgrade sends nothing again.
    """
    if isinstance(payload, WirePayload):
        return HASH_PREFIX + hashlib.sha256(payload.hashed_json()).hexdigest()[:15]
    return HASH_PREFIX + sha256_hex(model_json(payload, exclude={"revision"}))[:15]


def legacy_payload_hash(payload: TracePayload | WirePayload) -> str:
    """The hash stored before ``HASH_PREFIX`` (sorted keys), for memories written by then."""
    if isinstance(payload, WirePayload):
        data = {k: v for k, v in payload.fields.items() if k != "revision"}
    else:
        data = payload.model_dump(mode="json", exclude_none=True, exclude={"revision"})
    return sha256_hex(json.dumps(data, sort_keys=True, separators=(",", ":")))[:16]


def same_payload(stored: object, h: str, payload: TracePayload | WirePayload) -> bool:
    """Whether a remembered hash is that of ``payload`` (``h``), in any form stored so far.

    Only a hash that differs costs more: a ``WirePayload``'s JSON is the model's (tested), and
    a ``HASH_PREFIX`` hash that differs is checked against the model's own JSON too, so a
    memory written by a build that hashed models is recognised even if the two ever differed.
    """
    if stored == h:
        return True
    if not isinstance(stored, str):
        return False
    if stored.startswith(HASH_PREFIX):
        return isinstance(payload, WirePayload) and stored == payload_hash(payload.model())
    return stored == legacy_payload_hash(payload)


class Revisions:
    """Per-item ``[hash, revision]`` of what a layout emitted; stored in its watermark.

    Dict order is recency: an item touched moves to the end; beyond ``cap`` the oldest go.
    """

    def __init__(self, stored: object, cap: int = SENT_CAP, *, replay: bool = False) -> None:
        self.cap = cap
        self.replay = replay
        self.entries: dict[str, list[Any]] = {}
        if isinstance(stored, dict):
            for k, v in stored.items():
                if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                    self.entries[str(k)] = [str(v[0]), v[1]]

    def stamp(self, key: str, payload: Payload) -> Payload | None:
        """The payload with its revision set, or None when it was already sent unchanged."""
        h = payload_hash(payload)
        prev = self.entries.pop(key, None)
        if prev is None:
            rev = 0
        elif same_payload(prev[0], h, payload):
            self.entries[key] = [h, prev[1]]  # an older form of the hash: stored anew
            if not self.replay:
                return None
            rev = prev[1]
        else:
            rev = prev[1] + 1
        self.entries[key] = [h, rev]
        if isinstance(payload, WirePayload):
            return payload.with_revision(rev)
        return payload.model_copy(update={"revision": rev})

    def known(self, key: str) -> bool:
        return key in self.entries

    def dump(self) -> dict[str, list[Any]]:
        while len(self.entries) > self.cap:
            del self.entries[next(iter(self.entries))]
        return self.entries


def revisions_of(watermark: Watermark, cap: int = SENT_CAP) -> Revisions:
    return Revisions(watermark.get("sent"), cap, replay=bool(watermark.get(REPLAY)))


# --------------------------------------------------------------------------- small decoders


def text_parts(value: object, capture: bool) -> tuple[str | None, int, str | None]:
    """``(text or None, length, sha256)``; text is kept only when content is captured."""
    text = value if isinstance(value, str) else None
    if text is None or text == "":
        return None, 0, None
    return (text if capture else None), len(text), sha256_hex(text)


def iso_ms(value: object) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso_ms(value)
    except ValueError:
        return None


def epoch_ms(value: object) -> int | None:
    """An epoch-milliseconds field; values that cannot be epoch ms (uptime, 0) are None."""
    n = as_int(value)
    # 2001-09-09 in ms: anything smaller is an uptime or a counter, not a wall-clock time.
    return n if n is not None and n >= 1_000_000_000_000 else None


def as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def role_of(bubble_type: object) -> str:
    if bubble_type in (1, "1", "user"):
        return "user"
    if bubble_type in (2, "2", "ai", "assistant"):
        return "assistant"
    return "unknown"


def _tokens(value: object) -> tuple[int | None, int | None, bool | None]:
    """``tokenCount`` → (input, output, reported); ``{0, 0}`` means Cursor did not report."""
    if not isinstance(value, dict):
        return None, None, None
    tin, tout = as_int(value.get("inputTokens")), as_int(value.get("outputTokens"))
    if not tin and not tout:
        return None, None, False
    return tin, tout, True


def _model(bubble: Mapping[str, Any]) -> str | None:
    info = bubble.get("modelInfo")
    if isinstance(info, dict) and as_str(info.get("modelName")):
        return as_str(info.get("modelName"))
    return as_str(bubble.get("modelType")) or as_str(bubble.get("model"))


def _tool_calls(bubble: Mapping[str, Any], capture: bool) -> list[dict[str, Any]] | None:
    """``ToolCall`` fields of each call (``None`` left out)."""
    raw = bubble.get("toolFormerData")
    entries = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    calls: list[dict[str, Any]] = []
    for t in entries:
        if not isinstance(t, dict):
            continue
        params = t.get("params") if isinstance(t.get("params"), str) else None
        if params is None and isinstance(t.get("rawArgs"), str):
            params = t["rawArgs"]
        name = as_str(t.get("name"))
        if name is None and not t.get("toolCallId") and params is None:
            continue  # an empty placeholder Cursor writes before the call starts
        call = (
            ("name", name),
            ("status", as_str(t.get("status"))),
            ("params", params if capture else None),
            ("params_length", len(params) if params is not None else None),
            ("tool_call_id", as_str(t.get("toolCallId"))),
        )
        calls.append({k: v for k, v in call if v is not None})
    return calls or None


def _code_blocks(bubble: Mapping[str, Any]) -> dict[str, Any] | None:
    """``CodeBlocks`` fields."""
    blocks = bubble.get("codeBlocks")
    if not isinstance(blocks, list):
        return None
    langs: list[str] = []
    for b in blocks:
        lang = as_str(b.get("languageId")) if isinstance(b, dict) else None
        if lang and lang not in langs:
            langs.append(lang)
    return {"count": len(blocks), "languages": langs}


def bubble_time_ms(bubble: Mapping[str, Any]) -> int | None:
    """When the bubble was made, from its own fields only (never invented)."""
    t = iso_ms(bubble.get("createdAt")) or epoch_ms(bubble.get("createdAt"))
    if t is not None:
        return t
    timing = bubble.get("timingInfo")
    if isinstance(timing, dict):
        return epoch_ms(timing.get("clientRpcSendTime")) or epoch_ms(timing.get("clientEndTime"))
    return None


def assistant_settled(bubble: Mapping[str, Any]) -> bool:
    """Cursor's own end-of-stream markers on an assistant bubble."""
    timing = bubble.get("timingInfo")
    if isinstance(timing, dict) and (
        epoch_ms(timing.get("clientEndTime")) or epoch_ms(timing.get("clientSettleTime"))
    ):
        return True
    _, _, reported = _tokens(bubble.get("tokenCount"))
    return bool(reported)


def wire_message(
    bubble: Mapping[str, Any],
    *,
    bubble_id: str,
    composer_id: str | None,
    ctx: ReadContext,
    source_layout: str,
    position: int | None = None,
    settled_by: str | None = None,
) -> WirePayload:
    """A ``message`` payload from any era's bubble, absent fields left out, as its JSON fields
    (the layouts' bulk path; ``.model()`` gives the contract's ``MessagePayload``)."""
    fields = message_fields(
        bubble, bubble_id=bubble_id, composer_id=composer_id, ctx=ctx,
        source_layout=source_layout, position=position, settled_by=settled_by,
    )  # fmt: skip
    return WirePayload(MessagePayload, fields)


def message_fields(
    bubble: Mapping[str, Any],
    *,
    bubble_id: str,
    composer_id: str | None,
    ctx: ReadContext,
    source_layout: str,
    position: int | None = None,
    settled_by: str | None = None,
) -> dict[str, Any]:
    """A message's fields as ``MessagePayload.model_dump(mode="json", exclude_none=True)``
    gives them, in its field order (the tests hold the two together)."""
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
    # Built in the model's field order; the ``None`` ones left out.
    out: dict[str, Any] = {
        "trace_type": "message",
        "generation_id": request_id or bubble_id,
        "item_id": bubble_id,
        "source_layout": source_layout,
        "role": role_of(btype),
    }
    optional = (
        ("bubble_type", None if btype is None else str(btype)),
        ("composer_id", composer_id),
        ("bubble_id", bubble_id),
        ("request_id", request_id),
        ("position", position),
        ("text", text),
        ("text_length", length),
        ("text_sha256", digest),
        ("model", _model(bubble)),
        ("input_tokens", tin),
        ("output_tokens", tout),
        ("tokens_reported", reported),
        ("created_at", created_iso),
        ("client_rpc_send_time_ms", epoch_ms(timing.get("clientRpcSendTime"))),
        ("client_settle_time_ms", epoch_ms(timing.get("clientSettleTime"))),
        ("client_end_time_ms", epoch_ms(timing.get("clientEndTime"))),
        ("client_start_uptime_ms", float(start) if isinstance(start, int | float) else None),
        ("thinking_text", t_text),
        ("thinking_length", t_len or None),
        ("thinking_duration_ms", as_int(bubble.get("thinkingDurationMs"))),
        ("tool_calls", _tool_calls(bubble, capture)),
        ("code_blocks", _code_blocks(bubble)),
        ("settled_by", settled_by),
    )
    for k, v in optional:
        if v is not None:
            out[k] = v
    return out


def build_composer(
    data: Mapping[str, Any],
    *,
    composer_id: str,
    record: str,
    ctx: ReadContext,
    source_layout: str,
    message_count: int | None = None,
    workspace_storage_id: str | None = None,
) -> ComposerPayload:
    """A ``composer`` payload from a composerData value, a 2025 head or a header's JSON."""
    name, name_len, _ = text_parts(data.get("name"), ctx.capture_content)
    model_cfg = data.get("modelConfig") if isinstance(data.get("modelConfig"), dict) else {}
    assert isinstance(model_cfg, dict)
    usage = data.get("usageData")
    unified = as_str(data.get("unifiedMode"))
    force = as_str(data.get("forceMode"))
    return ComposerPayload(
        generation_id=composer_id,
        item_id=composer_id if record == "full" else f"{composer_id}:{record}",
        source_layout=source_layout,
        record=record,
        composer_id=composer_id,
        name=name,
        name_length=name_len or None,
        mode=unified or force,
        unified_mode=unified,
        force_mode=force,
        status=as_str(data.get("status")),
        lines_added=as_int(data.get("totalLinesAdded")),
        lines_removed=as_int(data.get("totalLinesRemoved")),
        model_name=as_str(model_cfg.get("modelName")),
        max_mode=as_bool(model_cfg.get("maxMode")),
        created_at_ms=epoch_ms(data.get("createdAt")),
        last_updated_at_ms=epoch_ms(data.get("lastUpdatedAt")),
        context_tokens_used=as_int(data.get("contextTokensUsed")),
        context_token_limit=as_int(data.get("contextTokenLimit")),
        is_archived=as_bool(data.get("isArchived")),
        is_subagent=as_bool(data.get("isSubagent")),
        message_count=message_count,
        usage=usage if isinstance(usage, dict) and usage else None,
        workspace_storage_id=workspace_storage_id,
        format_version=as_int(data.get("_v")),
    )


def workspace_id_of(data: Mapping[str, Any]) -> str | None:
    """``composerData.workspaceIdentifier.id`` (Cursor ≥ 3.12), when present."""
    ident = data.get("workspaceIdentifier")
    return as_str(ident.get("id")) if isinstance(ident, dict) else None


def composer_time_ms(p: ComposerPayload) -> int | None:
    return p.last_updated_at_ms or p.created_at_ms


def too_old(ts: int | None, ctx: ReadContext) -> bool:
    """Outside ``sync_window_hours``; an item without a time is never judged too old."""
    return ts is not None and ts < ctx.sync_cutoff_ms


@dataclass
class InlineMessages:
    """What a composer's inline ``conversation[]`` yields on one read."""

    items: list[TraceItem] = field(default_factory=list)
    pending: int = 0  # bubbles still listed in ``generatingBubbleIds``: read again later
    problems: list[str] = field(default_factory=list)


def inline_messages(
    composer: Mapping[str, Any],
    composer_id: str,
    composer_time: int | None,
    revs: Revisions,
    ctx: ReadContext,
    source_layout: str,
    storage_id: str | None = None,
) -> InlineMessages:
    """The ``message`` traces of an inline conversation (2024 workspace, older global rows).

    A bubble Cursor still lists in ``generatingBubbleIds`` waits for the rewrite that ends it;
    every other is final. A bubble without its own time takes the composer's.
    """
    out = InlineMessages()
    conversation = composer.get("conversation")
    if not isinstance(conversation, list):
        return out
    generating = composer.get("generatingBubbleIds")
    busy = set(generating) if isinstance(generating, list) else set()
    for pos, bubble in enumerate(conversation):
        bid = as_str(bubble.get("bubbleId")) if isinstance(bubble, dict) else None
        if bid is None or not isinstance(bubble, dict):
            out.problems.append(f"composer {composer_id}: conversation[{pos}] has no bubbleId")
            continue
        if bid in busy:
            out.pending += 1
            continue
        ts = bubble_time_ms(bubble) or composer_time
        if too_old(ts, ctx):
            continue
        msg = wire_message(
            bubble,
            bubble_id=bid,
            composer_id=composer_id,
            ctx=ctx,
            source_layout=source_layout,
            position=pos,
            settled_by="not_generating",
        )
        stamped = revs.stamp(f"m:{bid}", msg)
        if stamped is not None:
            out.items.append(TraceItem(stamped, ts, storage_id))
    return out
