"""The proposal's v1 layout: a table named ``"aiService.generations"`` with ``data_version``.

No Cursor build has been seen writing it, but the proposal was written against it and some
tools produce it, so it is read the way the proposal intended: rows whose ``data_version`` is
above the watermark, oldest first, in bounded batches.
"""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

from blueplane.cursor.layouts.base import LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.jsonvalue import BadValue, as_int, as_str, load_json
from blueplane.events import GenerationPayload

TABLE = "aiService.generations"
REQUIRED_COLUMNS = {"uuid", "data_version", "value"}
BATCH = 1000


class V1GenerationsTable:
    name: ClassVar[str] = "v1_generations_table"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        if TABLE not in tables:
            return False
        cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{TABLE}")')}
        return cols >= REQUIRED_COLUMNS

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> list[tuple[Any, ...]]:
        cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{TABLE}")')}
        ts = "timestamp" if "timestamp" in cols else "NULL"
        after = int(watermark.get("data_version", -1))
        return conn.execute(
            f'SELECT uuid, data_version, value, {ts} FROM "{TABLE}" '
            "WHERE data_version > ? ORDER BY data_version LIMIT ?",
            (after, BATCH),
        ).fetchall()

    def extract(
        self, raw: list[tuple[Any, ...]], watermark: Watermark, ctx: ReadContext
    ) -> LayoutRead:
        items: list[TraceItem] = []
        problems: list[str] = []
        top = int(watermark.get("data_version", -1))
        for uuid, version, value, ts in raw:
            version_i = as_int(version)
            if version_i is not None:
                top = max(top, version_i)
            gen_id = as_str(uuid)
            if gen_id is None:
                problems.append(f'"{TABLE}" row at data_version {version} has no uuid; skipped')
                continue
            try:
                data = load_json(f'"{TABLE}" row {gen_id}', value)
            except BadValue as exc:
                problems.append(str(exc))
                data = {}
            if not isinstance(data, dict):
                data = {}
            unix_ms = as_int(ts) or as_int(data.get("unixMs"))
            if unix_ms is not None and unix_ms < ctx.sync_cutoff_ms:
                continue
            description = as_str(data.get("textDescription"))
            items.append(
                TraceItem(
                    payload=GenerationPayload(
                        generation_id=gen_id,
                        generation_type=as_str(data.get("type")),
                        description=description if ctx.capture_content else None,
                        generation_timestamp_ms=unix_ms,
                        data_version=version_i,
                        source_layout=self.name,
                    ),
                    timestamp_ms=unix_ms,
                )
            )
        return LayoutRead(items=items, watermark={"data_version": top}, problems=problems)
