"""SchemaDetector: which of Cursor's layouts a database holds, and the readers for them.

Detection looks only at the schema and at the existence of a few exact keys (by their unique
index, without loading values), so it is cheap enough to run on every read. A database with
none of Cursor's tables is ``unsupported_schema`` — reported, never raised into the loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from blueplane.cursor.layouts import ALL_LAYOUTS, Layout
from blueplane.cursor.sqlite_ro import item_rowid, table_names

# Keys whose presence is worth naming in health, whether or not a reader handles them yet.
KNOWN_AI_KEYS = (
    "aiService.generations",
    "aiService.prompts",
    "composer.composerData",
    "workbench.panel.aichat.view.aichat.chatdata",
)
CURSOR_TABLES = ("ItemTable", "cursorDiskKV", "composerHeaders", "aiService.generations")


@dataclass(frozen=True)
class Detection:
    layouts: list[Layout]
    tables: frozenset[str]
    ai_keys: tuple[str, ...] = ()
    unsupported_reason: str | None = None
    layout_names: tuple[str, ...] = field(default=())

    @property
    def supported(self) -> bool:
        return self.unsupported_reason is None

    def describe(self) -> str:
        if self.unsupported_reason:
            return self.unsupported_reason
        parts = list(self.layout_names) or ["no AI data yet"]
        if self.ai_keys:
            parts.append("keys: " + ", ".join(self.ai_keys))
        return "; ".join(parts)


class SchemaDetector:
    def __init__(self, layouts: Sequence[Layout] = ALL_LAYOUTS) -> None:
        self.layouts = tuple(layouts)

    def detect(self, conn: sqlite3.Connection) -> Detection:
        """Run inside a read transaction of ``ReadOnlyDatabase``."""
        tables = table_names(conn)
        found = [layout for layout in self.layouts if layout.detect(conn, tables)]
        ai_keys: tuple[str, ...] = ()
        if "ItemTable" in tables:
            ai_keys = tuple(k for k in KNOWN_AI_KEYS if item_rowid(conn, k))
        reason = None
        if not found and not any(t in tables for t in CURSOR_TABLES):
            shown = ", ".join(sorted(tables)[:8]) or "no tables at all"
            reason = f"unsupported_schema: none of Cursor's tables found (has: {shown})"
        return Detection(
            layouts=found,
            tables=frozenset(tables),
            ai_keys=ai_keys,
            unsupported_reason=reason,
            layout_names=tuple(layout.name for layout in found),
        )
