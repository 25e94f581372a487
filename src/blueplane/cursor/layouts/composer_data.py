"""``composer.composerData`` in a workspace's ``ItemTable``, in its three eras.

1. ≤ late 2024: ``allComposers`` holds full composers with an inline ``conversation``:
   each yields a ``composer`` trace (record ``full``) and one ``message`` per bubble.
2. 2025: ``allComposers`` holds ``type: "head"`` entries: ``composer`` traces (record ``head``);
   the messages live in the global database.
3. 3.x: only ``selectedComposerIds``: no traces here; the ids only tell the global database
   reader which composers belong to this workspace (``membership_ids``).

Streaming: a 2024 inline bubble listed in its composer's ``generatingBubbleIds`` is still being
written and is left for a later read; every other bubble is final.
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
from blueplane.cursor.layouts.conversation import (
    build_composer,
    composer_time_ms,
    inline_messages,
    revisions_of,
    too_old,
)
from blueplane.cursor.layouts.jsonvalue import BadValue, as_str, load_json

COMPOSER_DATA_KEY = "composer.composerData"


def membership_ids(data: object) -> set[str]:
    """Composer ids a workspace's ``composer.composerData`` names, whatever its era."""
    if not isinstance(data, dict):
        return set()
    ids: set[str] = set()
    composers = data.get("allComposers")
    for c in composers if isinstance(composers, list) else []:
        cid = as_str(c.get("composerId")) if isinstance(c, dict) else None
        if cid:
            ids.add(cid)
    for key in ("selectedComposerIds", "lastFocusedComposerIds"):
        listed = data.get(key)
        for cid in listed if isinstance(listed, list) else []:
            if as_str(cid):
                ids.add(cid)
    if as_str(data.get("selectedComposerId")):
        ids.add(data["selectedComposerId"])
    return ids


def era_of(data: dict[str, Any]) -> str:
    composers = data.get("allComposers")
    if isinstance(composers, list):
        if any(isinstance(c, dict) and isinstance(c.get("conversation"), list) for c in composers):
            return "2024_inline"
        return "2025_head"
    return "3x_selected_ids"


class WorkspaceComposerData(ItemTableKeyLayout):
    name: ClassVar[str] = "workspace_composer_data"
    key: ClassVar[str] = COMPOSER_DATA_KEY

    def extract(self, raw: KeyValue | None, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        if raw is None:
            return LayoutRead(watermark=watermark)
        revs = revisions_of(watermark)
        try:
            data: Any = load_json(COMPOSER_DATA_KEY, raw.value)
        except BadValue as exc:
            return LayoutRead(watermark=watermark, problems=[str(exc)])
        if not isinstance(data, dict):
            problem = f"{COMPOSER_DATA_KEY} is a JSON {type(data).__name__}, not an object"
            return LayoutRead(watermark=watermark, problems=[problem])
        items: list[TraceItem] = []
        problems: list[str] = []
        composers = data.get("allComposers")
        if composers is not None and not isinstance(composers, list):
            problems.append(f"{COMPOSER_DATA_KEY}.allComposers is not an array")
            composers = []
        pending = 0
        for index, comp in enumerate(composers or []):
            cid = as_str(comp.get("composerId")) if isinstance(comp, dict) else None
            if cid is None:
                problems.append(f"{COMPOSER_DATA_KEY}.allComposers[{index}] has no composerId")
                continue
            conversation = comp.get("conversation")
            inline = isinstance(conversation, list)
            record = "full" if inline else "head"
            payload = build_composer(
                comp,
                composer_id=cid,
                record=record,
                ctx=ctx,
                source_layout=self.name,
                message_count=len(conversation) if isinstance(conversation, list) else None,
            )
            c_time = composer_time_ms(payload)
            if too_old(c_time, ctx):
                continue
            stamped = revs.stamp(f"c:{payload.item_key()}", payload)
            if stamped is not None:
                items.append(TraceItem(payload=stamped, timestamp_ms=c_time))
            found = inline_messages(comp, cid, c_time, revs, ctx, self.name)
            items.extend(found.items)
            pending += found.pending
            problems.extend(found.problems)
        # A bubble still generating is read again when Cursor rewrites the key to end it.
        wm: Watermark = {"rowid": raw.rowid, "era": era_of(data), "sent": revs.dump()}
        if pending:
            wm["generating"] = pending
        return LayoutRead(items=items, watermark=wm, problems=problems)
