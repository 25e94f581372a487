"""``aiService.prompts`` in ``ItemTable``: what the user typed, with neither id nor time.

The array is a capped ring (oldest first, old items fall off the front), so positions are not
stable ids. The watermark keeps the content hashes of the array's last ``TAIL`` entries at the
last read; on the next read that tail is looked up in the new array and only what follows it
is new. If the whole tail fell off (more than cap − TAIL prompts between two reads), the longest
suffix of the old tail found at the front of the new array is used; if nothing matches, the
whole array is new.

A prompt's id is ``sha256(text)[:16]:<n>`` where ``n`` counts the earlier prompts with the same
text (counts kept in the watermark, bounded), so typing the same text twice gives two prompts
and re-reading never gives a new id to an old one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from blueplane.cursor.layouts.base import (
    ItemTableKeyLayout,
    KeyValue,
    LayoutRead,
    ReadContext,
    TraceItem,
    Watermark,
)
from blueplane.cursor.layouts.conversation import sha256_hex, text_parts
from blueplane.cursor.layouts.jsonvalue import BadValue, as_int, load_json
from blueplane.events import PromptPayload

PROMPTS_KEY = "aiService.prompts"
TAIL = 20
COUNTS_CAP = 5_000


def new_start(old_tail: list[str], hashes: list[str]) -> int:
    """Index of the first new entry of ``hashes`` given the previous read's tail."""
    if not old_tail:
        return 0
    t = len(old_tail)
    # The whole old tail, latest occurrence first.
    for end in range(len(hashes), t - 1, -1):
        if hashes[end - t : end] == old_tail:
            return end
    # Part of it fell off the front: its longest suffix at the start of the new array.
    for k in range(min(t - 1, len(hashes)), 0, -1):
        if hashes[:k] == old_tail[-k:]:
            return k
    return 0


class ItemTablePrompts(ItemTableKeyLayout):
    name: ClassVar[str] = "itemtable_prompts"
    key: ClassVar[str] = PROMPTS_KEY

    def extract(self, raw: KeyValue | None, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        if raw is None:
            return LayoutRead(watermark=watermark)
        try:
            array: Any = load_json(PROMPTS_KEY, raw.value)
        except BadValue as exc:
            return LayoutRead(watermark={**watermark, "rowid": raw.rowid}, problems=[str(exc)])
        if not isinstance(array, list):
            return LayoutRead(
                watermark={**watermark, "rowid": raw.rowid},
                problems=[f"{PROMPTS_KEY} is a JSON {type(array).__name__}, not an array"],
            )
        texts = [p.get("text") if isinstance(p, dict) else None for p in array]
        hashes = [sha256_hex(t)[:16] if isinstance(t, str) else "-" for t in texts]
        old_tail = [h for h in watermark.get("tail", []) if isinstance(h, str)]
        start = new_start(old_tail, hashes)
        counts: dict[str, int] = {
            k: v for k, v in dict(watermark.get("counts", {})).items() if isinstance(v, int)
        }
        items: list[TraceItem] = []
        problems: list[str] = []
        for index in range(start, len(array)):
            entry, text = array[index], texts[index]
            if not isinstance(text, str):
                problems.append(f"{PROMPTS_KEY}[{index}] has no text; skipped")
                continue
            h = hashes[index]
            n = counts.pop(h, 0)
            counts[h] = n + 1  # re-inserted last: the most recent stay when bounded
            shown, length, digest = text_parts(text, ctx.capture_content)
            item_id = f"{h}:{n}"
            items.append(
                TraceItem(
                    payload=PromptPayload(
                        generation_id=item_id,
                        item_id=item_id,
                        source_layout=self.name,
                        text=shown,
                        text_length=length,
                        text_sha256=digest,
                        command_type=as_int(entry.get("commandType")),
                        occurrence=n,
                        array_index=index,
                    )
                )
            )
        while len(counts) > COUNTS_CAP:
            del counts[next(iter(counts))]
        return LayoutRead(
            items=items,
            watermark={"rowid": raw.rowid, "tail": hashes[-TAIL:], "counts": counts},
            problems=problems,
        )
