"""The legacy chat panel (2024): ``workbench.panel.aichat.view.aichat.chatdata`` in ``ItemTable``.

``{"tabs":[{"tabId","chatTitle","lastSendTime","bubbles":[{"type":"user"|"ai","id","text",
"modelType","requestId",…}]}]}``. Each tab yields a ``composer`` trace (record ``chat_tab``,
``composer_id`` = ``tabId``) and each bubble a ``message``. The panel has no end-of-stream
marker: a bubble is sent as read, and a later change becomes a new revision.
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
    revisions_of,
    too_old,
    wire_message,
)
from blueplane.cursor.layouts.jsonvalue import BadValue, as_str, load_json

CHATDATA_KEY = "workbench.panel.aichat.view.aichat.chatdata"


class LegacyChatData(ItemTableKeyLayout):
    name: ClassVar[str] = "legacy_chatdata"
    key: ClassVar[str] = CHATDATA_KEY

    def extract(self, raw: KeyValue | None, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        if raw is None:
            return LayoutRead(watermark=watermark)
        try:
            data: Any = load_json(CHATDATA_KEY, raw.value)
        except BadValue as exc:
            return LayoutRead(watermark=watermark, problems=[str(exc)])
        tabs = data.get("tabs") if isinstance(data, dict) else None
        if not isinstance(tabs, list):
            return LayoutRead(
                watermark={**watermark, "rowid": raw.rowid},
                problems=[f"{CHATDATA_KEY} has no tabs array"],
            )
        revs = revisions_of(watermark)
        items: list[TraceItem] = []
        problems: list[str] = []
        for t_index, tab in enumerate(tabs):
            tab_id = as_str(tab.get("tabId")) if isinstance(tab, dict) else None
            if tab_id is None or not isinstance(tab, dict):
                problems.append(f"{CHATDATA_KEY}.tabs[{t_index}] has no tabId")
                continue
            bubbles = tab.get("bubbles") if isinstance(tab.get("bubbles"), list) else []
            assert isinstance(bubbles, list)
            composer = build_composer(
                {"name": tab.get("chatTitle"), "lastUpdatedAt": tab.get("lastSendTime")},
                composer_id=tab_id,
                record="chat_tab",
                ctx=ctx,
                source_layout=self.name,
                message_count=len(bubbles),
            )
            ts = composer_time_ms(composer)
            if too_old(ts, ctx):
                continue
            stamped = revs.stamp(f"c:{composer.item_key()}", composer)
            if stamped is not None:
                items.append(TraceItem(payload=stamped, timestamp_ms=ts))
            for pos, bubble in enumerate(bubbles):
                bid = as_str(bubble.get("id")) if isinstance(bubble, dict) else None
                if bid is None or not isinstance(bubble, dict):
                    problems.append(f"chat tab {tab_id}: bubbles[{pos}] has no id")
                    continue
                msg = wire_message(
                    bubble,
                    bubble_id=bid,
                    composer_id=tab_id,
                    ctx=ctx,
                    source_layout=self.name,
                    position=pos,
                )
                stamped = revs.stamp(f"m:{bid}", msg)
                if stamped is not None:
                    items.append(TraceItem(payload=stamped, timestamp_ms=ts))
        return LayoutRead(
            items=items, watermark={"rowid": raw.rowid, "sent": revs.dump()}, problems=problems
        )
