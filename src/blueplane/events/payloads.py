"""The ``payload`` of each ``database_trace`` kind: generation, prompt, composer, message."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class TranscriptToolUse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    name: str | None = None


class TranscriptPayload(TracePayload):
    """One line of a Cursor agent transcript (``agent-transcripts/**.jsonl`` or older ``.txt``).

    ``item_id`` = ``generation_id`` = ``<conversation_id>:<line>`` (line numbers from 0), so each
    line is one trace, exactly once. ``turn_index`` counts the user messages before and at this
    line (-1 before the first): the transcript has no generation ids, so its turns are joined to
    the others by position. A subagent's transcript names its parent conversation.
    """

    trace_type: Literal["transcript_message"] = "transcript_message"
    conversation_id: str
    parent_conversation_id: str | None = None
    transcript_path: str
    line: int
    turn_index: int
    role: str | None = None
    entry_type: str | None = None
    status: str | None = None
    text: str | None = None
    text_length: int = 0
    text_sha256: str | None = None
    tool_uses: list[TranscriptToolUse] | None = None
