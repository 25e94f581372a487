"""The workspace ``aiService.generations`` layout, the v1 table, and the SchemaDetector.

Databases are real SQLite files with Cursor's DDL, written as Cursor writes them, in both
journal modes and with TEXT and BLOB values.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blueplane.cursor.layouts.base import ReadContext
from blueplane.cursor.layouts.item_generations import (
    GENERATIONS_KEY,
    ItemTableGenerations,
    pair_prompt,
)
from blueplane.cursor.layouts.v1_table import V1GenerationsTable
from blueplane.cursor.schema_detector import SchemaDetector
from blueplane.cursor.sqlite_ro import ReadOnlyDatabase
from tests.fixtures.cursor_db import CursorDb, make_generation, make_prompt, now_ms

LAYOUT = ItemTableGenerations()
MODES = [("delete", "text"), ("wal", "blob"), ("delete", "blob"), ("wal", "text")]


def ctx(cutoff_ms: int = 0, capture: bool = True) -> ReadContext:
    return ReadContext(now_ms=now_ms(), sync_cutoff_ms=cutoff_ms, capture_content=capture)


def read(path: Path, wm: dict, c: ReadContext | None = None, layout=LAYOUT):
    raw = ReadOnlyDatabase(path, 1.5).read_sync(lambda conn: layout.fetch(conn, wm))
    return layout.extract(raw, wm, c or ctx())


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_new_generations_only_once(tmp_path: Path, mode: str, vtype: str) -> None:
    db = CursorDb(tmp_path / "state.vscdb", journal_mode=mode, value_type=vtype)
    first = db.append_generations(3)
    r1 = read(db.path, {})
    assert [i.payload.generation_id for i in r1.items] == [g["generationUUID"] for g in first]
    assert r1.problems == []
    # Nothing rewritten: the value is not even loaded.
    raw = ReadOnlyDatabase(db.path, 1.5).read_sync(lambda c: LAYOUT.fetch(c, r1.watermark))
    assert raw is None
    second = db.append_generations(2)
    r2 = read(db.path, r1.watermark)
    assert [i.payload.generation_id for i in r2.items] == [g["generationUUID"] for g in second]


def test_items_that_fell_off_the_ring_are_not_invented(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb", generations_cap=5)
    db.append_generations(5)
    r1 = read(db.path, {})
    new = db.append_generations(7)  # 7 appended, the ring keeps 5: two were never readable
    r2 = read(db.path, r1.watermark)
    assert [i.payload.generation_id for i in r2.items] == [g["generationUUID"] for g in new[2:]]


def test_sync_window_skips_old_generations(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    now = now_ms()
    old = make_generation(now - 48 * 3_600_000, text="old")
    fresh = make_generation(now - 3_600_000, text="fresh")
    db.append_generations([old, fresh])
    r = read(db.path, {}, ctx(cutoff_ms=now - 24 * 3_600_000))
    assert [i.payload.generation_id for i in r.items] == [fresh["generationUUID"]]
    # The old one is in the watermark: it will not reappear later either.
    db.append_generations(1)
    assert old["generationUUID"] not in {
        i.payload.generation_id for i in read(db.path, r.watermark).items
    }


def test_fields_are_honest(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    g = make_generation(1742530949974, type="apply", text=None)
    db.append_generations([g])
    (item,) = read(db.path, {}).items
    d = item.payload.to_json_dict()
    assert d == {
        "trace_type": "generation",
        "generation_id": g["generationUUID"],
        "generation_type": "apply",
        "generation_timestamp_ms": 1742530949974,
        "source_layout": "itemtable_generations",
    }
    assert item.timestamp_ms == 1742530949974


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('[{"generationUUID": "a", "unixMs": 1', "not valid JSON"),
        (None, "is NULL"),
        ('{"generationUUID": "a"}', "not an array"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (42, "holds a int"),
    ],
)
def test_malformed_values_are_problems_not_exceptions(tmp_path: Path, raw, problem: str) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    db.write_raw(GENERATIONS_KEY, raw)
    r = read(db.path, {"rowid": 0, "ids": ["keep"]})
    assert r.items == []
    assert any(problem in p for p in r.problems), r.problems
    assert r.watermark == {"rowid": 0, "ids": ["keep"]}  # not advanced past broken data


def test_entries_with_wrong_shapes_are_skipped_and_counted(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    good = make_generation(text="ok")
    db.write_raw(
        GENERATIONS_KEY,
        '[1, null, {"type": "composer"}, {"generationUUID": 7}, '
        f'{{"generationUUID": "{good["generationUUID"]}", "unixMs": "nope", "type": 3}}]',
    )
    r = read(db.path, {})
    (item,) = r.items
    assert item.payload.generation_id == good["generationUUID"]
    assert item.payload.generation_timestamp_ms is None and item.payload.generation_type is None
    assert any("4 entries without a generationUUID" in p for p in r.problems)


def test_prompt_pairing_only_when_certain(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    db.set_prompts([make_prompt(text="explain the parser"), make_prompt(text="  fix the bug ")])
    gens = [
        make_generation(type="composer", text="explain the parser"),
        make_generation(type="cmdk", text="fix the bug"),
        make_generation(type="composer", text="explain the"),  # a prefix: declined
        make_generation(type="apply", text="explain the parser"),  # apply has no prompt
    ]
    db.append_generations(gens)
    by_id = {i.payload.generation_id: i.payload for i in read(db.path, {}).items}
    p = [by_id[g["generationUUID"]] for g in gens]
    assert p[0].prompt_text == "explain the parser" and p[0].prompt_pairing
    assert p[1].prompt_text == "fix the bug"
    assert p[2].prompt_text is None and p[2].prompt_pairing is None
    assert p[3].prompt_text is None
    assert pair_prompt("composer", None, ["x"]) is None


def test_capture_content_false_drops_text(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb")
    db.set_prompts([make_prompt(text="secret plan")])
    db.append_generations([make_generation(text="secret plan")])
    (item,) = read(db.path, {}, ctx(capture=False)).items
    d = item.payload.to_json_dict()
    assert "description" not in d and "prompt_text" not in d


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_v1_table(tmp_path: Path, mode: str) -> None:
    db = CursorDb(tmp_path / "state.vscdb", journal_mode=mode, tables=("aiService.generations",))
    ids = [db.add_legacy_generation(data_version=v, timestamp_ms=now_ms()) for v in (1, 2, 3)]
    layout = V1GenerationsTable()
    r1 = read(db.path, {}, layout=layout)
    assert [i.payload.generation_id for i in r1.items] == ids
    assert r1.watermark == {"data_version": 3}
    newer = db.add_legacy_generation(data_version=4, timestamp_ms=now_ms())
    r2 = read(db.path, r1.watermark, layout=layout)
    assert [i.payload.generation_id for i in r2.items] == [newer]
    assert r2.items[0].payload.data_version == 4


def _detect(path: Path):
    return ReadOnlyDatabase(path, 1.5).read_sync(SchemaDetector().detect)


def test_detector_names_each_layout(tmp_path: Path) -> None:
    ws = CursorDb(tmp_path / "a.vscdb")
    ws.append_generations(1)
    ws.set_prompts([make_prompt()])
    d = _detect(ws.path)
    assert d.supported and d.layout_names[0] == "itemtable_generations"
    assert "aiService.prompts" in d.describe()
    v1 = CursorDb(tmp_path / "b.vscdb", tables=("aiService.generations",))
    assert "v1_generations_table" in _detect(v1.path).layout_names
    empty = CursorDb(tmp_path / "c.vscdb")
    d = _detect(empty.path)
    assert d.supported and d.describe().startswith("no AI data yet")


def test_unknown_layout_is_unsupported_schema(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    d = _detect(path)
    assert not d.supported
    assert "unsupported_schema" in d.describe() and "notes" in d.describe()


def test_real_2024_database_is_detected_for_what_it_is(real_fixture: Path) -> None:
    d = _detect(real_fixture)
    assert d.supported
    assert set(d.ai_keys) >= {
        "aiService.prompts",
        "composer.composerData",
        "workbench.panel.aichat.view.aichat.chatdata",
    }
    assert "aiService.generations" not in d.ai_keys
