"""``aiService.generations`` in ``ItemTable``: the real layout of every Cursor workspace database.

The key holds a JSON array, oldest first, capped (50–100 items): old items fall off the front.
The watermark is the set of generation ids in the array at the last read, so an item is new
exactly when its id was not there before; what fell off unread is gone and never invented.

Prompt pairing: ``aiService.prompts`` has neither ids nor times, so a prompt is attached only
when the generation's ``textDescription`` equals the text of a prompt exactly (after trimming
whitespace). Anything else — positional guesses, prefixes, several different candidates — is
declined and ``prompt_text`` is left out.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, ClassVar

from blueplane.cursor.layouts.base import (
    KeyValue,
    LayoutRead,
    ReadContext,
    TraceItem,
    Watermark,
    changed_key,
)
from blueplane.cursor.layouts.jsonvalue import BadValue, as_int, as_str, load_json
from blueplane.cursor.sqlite_ro import item_rowid, item_value
from blueplane.events import GenerationPayload, WirePayload

GENERATIONS_KEY = "aiService.generations"
PROMPTS_KEY = "aiService.prompts"
# Generation types that start from a typed prompt; "apply" and "bugbot" do not.
PROMPTED_TYPES = frozenset({"composer", "cmdk", "chat"})


@dataclass(frozen=True)
class _Raw:
    generations: KeyValue
    prompts_value: object | None


class ItemTableGenerations:
    name: ClassVar[str] = "itemtable_generations"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        return "ItemTable" in tables and item_rowid(conn, GENERATIONS_KEY) > 0

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> _Raw | None:
        generations = changed_key(conn, GENERATIONS_KEY, watermark)
        if generations is None:
            return None  # key not rewritten since the last read: nothing new, value not loaded
        _rowid, prompts = item_value(conn, PROMPTS_KEY)
        return _Raw(generations, prompts)

    def extract(self, raw: _Raw | None, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        if raw is None:
            return LayoutRead(watermark=watermark)
        try:
            array = load_json(GENERATIONS_KEY, raw.generations.value)
        except BadValue as exc:
            # Keep the old watermark: the next rewrite by Cursor is read again from scratch.
            return LayoutRead(watermark=watermark, problems=[str(exc)])
        if not isinstance(array, list):
            return LayoutRead(
                watermark=watermark,
                problems=[f"{GENERATIONS_KEY} is a JSON {type(array).__name__}, not an array"],
            )
        problems: list[str] = []
        prompts = _prompt_texts(raw.prompts_value, problems)
        seen = set(watermark.get("ids", []))
        ids: list[str] = []
        items: list[TraceItem] = []
        skipped = 0
        for entry in array:
            gen_id = as_str(entry.get("generationUUID")) if isinstance(entry, dict) else None
            if gen_id is None:
                skipped += 1
                continue
            ids.append(gen_id)
            if gen_id in seen:
                continue
            unix_ms = as_int(entry.get("unixMs"))
            if unix_ms is not None and unix_ms < ctx.sync_cutoff_ms:
                continue  # older than sync_window_hours
            items.append(_item(entry, gen_id, unix_ms, prompts, ctx))
        if skipped:
            problems.append(
                f"{GENERATIONS_KEY}: {skipped} entries without a generationUUID skipped"
            )
        return LayoutRead(
            items=items,
            watermark={"rowid": raw.generations.rowid, "ids": ids},
            problems=problems,
        )


def _prompt_texts(raw: object | None, problems: list[str]) -> list[str]:
    if raw is None:
        return []
    try:
        value: Any = load_json(PROMPTS_KEY, raw)
    except BadValue as exc:
        problems.append(f"{exc}; prompts not paired")
        return []
    if not isinstance(value, list):
        problems.append(f"{PROMPTS_KEY} is not an array; prompts not paired")
        return []
    return [
        p["text"].strip() for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
    ]


def pair_prompt(gen_type: str | None, description: str | None, prompts: list[str]) -> str | None:
    """The prompt text when the pairing is certain, else None (see module docstring)."""
    if gen_type not in PROMPTED_TYPES or not description:
        return None
    wanted = description.strip()
    return wanted if wanted and wanted in prompts else None


def _item(
    entry: dict[str, Any],
    gen_id: str,
    unix_ms: int | None,
    prompts: list[str],
    ctx: ReadContext,
) -> TraceItem:
    gen_type = as_str(entry.get("type"))
    description = as_str(entry.get("textDescription"))
    prompt = pair_prompt(gen_type, description, prompts)
    # ``GenerationPayload``'s JSON fields in its order (a first sync builds 10,000 of them;
    # see ``WirePayload``); ``None`` ones left out.
    fields: dict[str, Any] = {
        "trace_type": "generation",
        "generation_id": gen_id,
        "source_layout": ItemTableGenerations.name,
    }
    optional = (
        ("generation_type", gen_type),
        ("description", description if ctx.capture_content else None),
        ("generation_timestamp_ms", unix_ms),
        ("prompt_text", prompt if ctx.capture_content else None),
        ("prompt_pairing", "exact_description_match" if prompt else None),
    )
    for k, v in optional:
        if v is not None:
            fields[k] = v
    return TraceItem(payload=WirePayload(GenerationPayload, fields), timestamp_ms=unix_ms)
