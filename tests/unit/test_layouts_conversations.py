"""Conversation layouts on real SQLite files: both journal modes, TEXT and BLOB values."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from blueplane.cursor.layouts import ALL_LAYOUTS, Layout, LayoutRead, ReadContext, Watermark
from blueplane.cursor.layouts.agent_kv import AgentKvBlobs
from blueplane.cursor.layouts.chatdata import LegacyChatData
from blueplane.cursor.layouts.composer_data import WorkspaceComposerData, membership_ids
from blueplane.cursor.layouts.composer_headers import ComposerHeadersTable
from blueplane.cursor.layouts.disk_bubbles import SETTLE_QUIET_MS, GlobalBubbles
from blueplane.cursor.layouts.disk_composers import GlobalComposerData
from blueplane.cursor.layouts.item_prompts import ItemTablePrompts, new_start
from blueplane.cursor.schema_detector import SchemaDetector
from blueplane.cursor.sqlite_ro import ReadOnlyDatabase, table_names
from tests.fixtures.cursor_db import (
    FAKE_ACCESS_TOKEN,
    FAKE_REFRESH_TOKEN,
    OMIT,
    CursorDb,
    make_assistant_bubble,
    make_chat_bubble,
    make_chat_tab,
    make_chatdata,
    make_composer_2024,
    make_composer_data_3x,
    make_composer_data_2024,
    make_composer_data_2025,
    make_composer_head,
    make_composer_header,
    make_global_composer,
    make_inline_bubble,
    make_prompt,
    make_user_bubble,
    make_user_dir,
    make_workspace_identifier,
    new_uuid,
    now_ms,
)

MODES = [
    pytest.param("delete", "text", id="journal-text"),
    pytest.param("wal", "blob", id="wal-blob"),
    pytest.param("delete", "blob", id="journal-blob"),
    pytest.param("wal", "text", id="wal-text"),
]
CTX = ReadContext(now_ms=now_ms(), sync_cutoff_ms=0)


def read(db: CursorDb, layout: Layout, wm: Watermark | None = None, ctx: ReadContext = CTX):
    """One poll of one layout: fetch in a read-only transaction, then extract."""
    ro = ReadOnlyDatabase(db.path, 2.0)

    def fetch(conn: sqlite3.Connection) -> Any:
        if not layout.detect(conn, table_names(conn)):
            return None
        return layout.fetch(conn, wm or {})

    raw = ro.read_sync(fetch)
    if raw is None:
        return LayoutRead(watermark=wm or {})
    return layout.extract(raw, wm or {}, ctx)


def payloads(result: LayoutRead, trace_type: str | None = None) -> list[dict[str, Any]]:
    out = [i.payload.to_json_dict() for i in result.items]
    return [p for p in out if trace_type is None or p["trace_type"] == trace_type]


def ws_db(tmp_path: Path, mode: str, vtype: str) -> CursorDb:
    return CursorDb(tmp_path / "ws" / "state.vscdb", mode, vtype)  # type: ignore[arg-type]


def global_db(tmp_path: Path, mode: str, vtype: str, headers: bool = False) -> CursorDb:
    ud = make_user_dir(tmp_path)
    return ud.global_db(mode, vtype, composer_headers=headers)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_prompts_only_new_tail_entries(tmp_path: Path, mode: str, vtype: str) -> None:
    db = ws_db(tmp_path, mode, vtype)
    db.set_prompts([make_prompt("a"), make_prompt("b"), make_prompt("a")])
    first = read(db, ItemTablePrompts())
    ids = [p["item_id"] for p in payloads(first)]
    assert len(ids) == 3 and len(set(ids)) == 3  # the same text twice: two prompts
    assert [p["occurrence"] for p in payloads(first)] == [0, 0, 1]
    assert read(db, ItemTablePrompts(), first.watermark).items == []  # unchanged key
    db.append_prompts([make_prompt("c"), make_prompt("a")])
    second = read(db, ItemTablePrompts(), first.watermark)
    got = payloads(second)
    assert [p["text"] for p in got] == ["c", "a"]
    assert got[1]["occurrence"] == 2 and got[1]["item_id"] not in ids


def test_prompts_ring_dropping_its_front(tmp_path: Path) -> None:
    db = ws_db(tmp_path, "delete", "text")
    db.set_prompts([make_prompt(f"p{i}") for i in range(30)])
    first = read(db, ItemTablePrompts())
    # Cursor drops 25 from the front and appends 25: the old tail (20) is gone except 5.
    db.set_prompts([make_prompt(f"p{i}") for i in range(25, 55)])
    second = read(db, ItemTablePrompts(), first.watermark)
    assert [p["text"] for p in payloads(second)] == [f"p{i}" for i in range(30, 55)]


def test_new_start_cases() -> None:
    assert new_start([], ["a"]) == 0
    assert new_start(["a", "b"], ["a", "b", "c"]) == 2
    assert new_start(["x", "y"], ["y", "z"]) == 1  # partly fallen off
    assert new_start(["x"], ["a", "b"]) == 0  # replaced: all new


def test_prompts_malformed_and_privacy(tmp_path: Path) -> None:
    db = ws_db(tmp_path, "delete", "text")
    db.write_raw("aiService.prompts", "[{not json")
    bad = read(db, ItemTablePrompts())
    assert bad.items == [] and "not valid JSON" in bad.problems[0]
    db.set_prompts([make_prompt("secret prompt"), {"commandType": 2}])
    private = read(db, ItemTablePrompts(), bad.watermark, CTX.__class__(0, 0, False))
    (p,) = payloads(private)
    assert "text" not in p and p["text_length"] == len("secret prompt")
    assert len(p["text_sha256"]) == 64 and "has no text" in private.problems[0]


# --------------------------------------------------------------------------- composer.composerData


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_composer_data_2024_inline(tmp_path: Path, mode: str, vtype: str) -> None:
    db = ws_db(tmp_path, mode, vtype)
    streaming = make_inline_bubble(2, "partial")
    comp = make_composer_2024(
        [make_inline_bubble(1, "q"), make_inline_bubble(2, "answer"), streaming],
        name="Sidebar",
        generatingBubbleIds=[streaming["bubbleId"]],
    )
    db.set_composer_data(make_composer_data_2024([comp]))
    first = read(db, WorkspaceComposerData())
    (composer,) = payloads(first, "composer")
    assert composer["record"] == "full" and composer["message_count"] == 3
    assert composer["name"] == "Sidebar" and composer["item_id"] == comp["composerId"]
    msgs = payloads(first, "message")
    assert [m["role"] for m in msgs] == ["user", "assistant"]  # the generating one waits
    assert first.watermark["era"] == "2024_inline"
    # It finishes: only that bubble (and the changed composer) are new.
    streaming["text"] = "partial and the rest"
    comp["generatingBubbleIds"] = []
    db.set_composer_data(make_composer_data_2024([comp]))
    second = read(db, WorkspaceComposerData(), first.watermark)
    assert [m["bubble_id"] for m in payloads(second, "message")] == [streaming["bubbleId"]]
    assert payloads(second, "message")[0]["revision"] == 0
    # A later edit of a message already sent is an update with revision 1.
    comp["conversation"][1]["text"] = "answer, edited"
    db.set_composer_data(make_composer_data_2024([comp]))
    third = read(db, WorkspaceComposerData(), second.watermark)
    (update,) = payloads(third, "message")
    assert update["revision"] == 1 and update["text"] == "answer, edited"


def test_composer_data_2025_heads_and_3x(tmp_path: Path) -> None:
    db = ws_db(tmp_path, "delete", "text")
    head = make_composer_head(totalLinesAdded=12, totalLinesRemoved=3)
    db.set_composer_data(make_composer_data_2025([head, {"type": "head"}]))
    r = read(db, WorkspaceComposerData())
    (c,) = payloads(r, "composer")
    assert c["record"] == "head" and c["item_id"] == f"{head['composerId']}:head"
    assert (c["lines_added"], c["lines_removed"], c["mode"]) == (12, 3, "agent")
    assert "has no composerId" in r.problems[0]
    ids = [new_uuid(), new_uuid()]
    db.set_composer_data(make_composer_data_3x(ids))
    r3 = read(db, WorkspaceComposerData(), r.watermark)
    assert r3.items == [] and r3.watermark["era"] == "3x_selected_ids"
    assert membership_ids(make_composer_data_3x(ids)) == set(ids)
    assert head["composerId"] in membership_ids(make_composer_data_2025([head]))


@pytest.mark.parametrize("field", ["name", "createdAt", "lastUpdatedAt", "unifiedMode", "status"])
def test_composer_head_field_missing(tmp_path: Path, field: str) -> None:
    db = ws_db(tmp_path, "delete", "text")
    db.set_composer_data(make_composer_data_2025([make_composer_head(omit=[field])]))
    (c,) = payloads(read(db, WorkspaceComposerData()), "composer")
    absent = {
        "name": "name",
        "createdAt": "created_at_ms",
        "lastUpdatedAt": "last_updated_at_ms",
        "unifiedMode": "unified_mode",
        "status": "status",
    }[field]
    assert absent not in c


def test_composer_data_not_an_object(tmp_path: Path) -> None:
    db = ws_db(tmp_path, "delete", "blob")
    db.write_raw("composer.composerData", b"[1,2]")
    r = read(db, WorkspaceComposerData())
    assert r.items == [] and "not an object" in r.problems[0]


# --------------------------------------------------------------------------- legacy chat panel


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_chatdata_tabs_and_bubbles(tmp_path: Path, mode: str, vtype: str) -> None:
    db = ws_db(tmp_path, mode, vtype)
    ai = make_chat_bubble("ai", "A demo.")
    tab = make_chat_tab([make_chat_bubble("user", "what is this?"), ai, {"text": "no id"}])
    db.set_chatdata(make_chatdata([tab]))
    r = read(db, LegacyChatData())
    (c,) = payloads(r, "composer")
    assert c["record"] == "chat_tab" and c["composer_id"] == tab["tabId"]
    user, answer = payloads(r, "message")
    assert user["role"] == "user" and "model" not in user
    assert answer["model"] == "claude-3.5-sonnet" and answer["generation_id"] == ai["requestId"]
    assert "has no id" in r.problems[0]
    assert read(db, LegacyChatData(), r.watermark).items == []


# --------------------------------------------------------------------------- global cursorDiskKV


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_global_composer_and_bubbles(tmp_path: Path, mode: str, vtype: str) -> None:
    db = global_db(tmp_path, mode, vtype)
    user, answer = make_user_bubble("explain"), make_assistant_bubble("Done.")
    comp = db.put_conversation(
        [user, answer], workspaceIdentifier=make_workspace_identifier("sid1", "/p")
    )
    rc = read(db, GlobalComposerData())
    (c,) = payloads(rc, "composer")
    assert rc.items[0].workspace_storage_id == "sid1"
    assert (c["model_name"], c["max_mode"], c["context_tokens_used"]) == (
        "claude-4.5-opus-high-thinking",
        True,
        115464,
    )
    assert c["message_count"] == 2 and "usage" not in c  # usageData {} is "not reported"
    rb = read(db, GlobalBubbles())
    by_role = {p["role"]: p for p in payloads(rb)}
    u, a = by_role["user"], by_role["assistant"]
    assert u["tokens_reported"] is False and "input_tokens" not in u  # {0,0}
    assert u["model"] == "claude-4.5-sonnet" and u["composer_id"] == comp["composerId"]
    assert (a["input_tokens"], a["output_tokens"], a["tokens_reported"]) == (1200, 85, True)
    assert a["request_id"] == answer["requestId"] == a["generation_id"]
    assert a["item_id"] == answer["bubbleId"] and a["settled_by"] == "end_marker"
    assert a["client_end_time_ms"] == answer["timingInfo"]["clientEndTime"]
    assert a["client_start_uptime_ms"] == 4745281.3
    assert a["thinking_duration_ms"] == 5432 and a["thinking_text"]
    assert a["tool_calls"][0]["name"] == "read_file" and a["tool_calls"][0]["status"]
    assert a["code_blocks"] == {"count": 1, "languages": ["python"]}
    assert a["created_at"] == answer["createdAt"]
    # Idle: nothing new, no value read.
    ro = ReadOnlyDatabase(db.path, 2.0)
    raw = ro.read_sync(lambda conn: GlobalBubbles().fetch(conn, rb.watermark))
    assert raw.values_read == 0
    assert read(db, GlobalBubbles(), rb.watermark).items == []


def test_global_inline_conversation(tmp_path: Path) -> None:
    db = global_db(tmp_path, "wal", "text")
    db.put_conversation([make_user_bubble("hi"), make_assistant_bubble("yo")], inline=True)
    r = read(db, GlobalComposerData())
    assert [p["trace_type"] for p in payloads(r)] == ["composer", "message", "message"]


def test_global_null_malformed_orphan_and_drafts(tmp_path: Path) -> None:
    db = global_db(tmp_path, "wal", "blob")
    cid = new_uuid()
    db.write_raw(f"composerData:{cid}", None, "cursorDiskKV")
    db.write_raw(f"composerData:{new_uuid()}", "{broken", "cursorDiskKV")
    db.put_composer(make_global_composer([], name=OMIT))  # an empty draft
    db.write_raw(f"bubbleId:{cid}:{new_uuid()}", None, "cursorDiskKV")
    db.write_raw(f"bubbleId:{cid}:{new_uuid()}", "not json", "cursorDiskKV")
    db.write_raw(f"bubbleId:{cid}:{new_uuid()}", "[1]", "cursorDiskKV")
    orphan = make_user_bubble("nobody lists me")
    db.put_bubble(new_uuid(), orphan)
    rc = read(db, GlobalComposerData())
    assert rc.items == [] and "not valid JSON" in rc.problems[0]
    rb = read(db, GlobalBubbles())
    assert [p["bubble_id"] for p in payloads(rb)] == [orphan["bubbleId"]]
    assert "not valid JSON" in rb.problems[0] and "(and 1 more)" in rb.problems[0]


BUBBLE_FIELDS = [
    "type",
    "bubbleId",
    "createdAt",
    "text",
    "requestId",
    "tokenCount",
    "modelInfo",
    "timingInfo",
    "thinking",
    "thinkingDurationMs",
    "toolFormerData",
    "codeBlocks",
]


@pytest.mark.parametrize("field", BUBBLE_FIELDS)
def test_bubble_each_field_missing(tmp_path: Path, field: str) -> None:
    db = global_db(tmp_path, "delete", "text")
    cid = new_uuid()
    bubble = make_assistant_bubble("answer", omit=[field])
    db.put_bubble(cid, bubble, bubble_id="b1")
    r = read(db, GlobalBubbles(), ctx=ReadContext(now_ms=now_ms(), sync_cutoff_ms=0))
    missing = {
        "text": "text",
        "requestId": "request_id",
        "tokenCount": "input_tokens",
        "modelInfo": "model",
        "timingInfo": "client_end_time_ms",
        "thinking": "thinking_text",
        "thinkingDurationMs": "thinking_duration_ms",
        "toolFormerData": "tool_calls",
        "codeBlocks": "code_blocks",
        "createdAt": "created_at",
    }
    if field == "type":  # not an assistant: sent at once, role unknown
        (p,) = payloads(r)
        assert p["role"] == "unknown"
        return
    (p,) = payloads(r)
    assert p["bubble_id"] == "b1"  # the key names the bubble even without bubbleId
    if field in missing:
        assert missing[field] not in p
    if field == "requestId":
        assert p["generation_id"] == "b1"


def test_streaming_bubble_rewritten_ten_times_is_one_message(tmp_path: Path) -> None:
    db = global_db(tmp_path, "wal", "text")
    cid = new_uuid()
    db.put_bubble(cid, make_user_bubble("write it"))
    wm: Watermark = {}
    sent: list[dict[str, Any]] = []

    def poll(_i: int, _bubble: dict[str, Any]) -> None:
        nonlocal wm
        r = read(db, GlobalBubbles(), wm)
        wm = r.watermark
        sent.extend(payloads(r))

    final = db.stream_assistant_bubble(cid, "The full answer, streamed.", steps=10, on_write=poll)
    poll(0, {})
    poll(0, {})
    answers = [p for p in sent if p["role"] == "assistant"]
    assert len(answers) == 1 and answers[0]["text"] == final["text"]
    assert answers[0]["revision"] == 0 and answers[0]["output_tokens"] == 85
    assert len([p for p in sent if p["role"] == "user"]) == 1
    assert wm["pending"] == {}


def test_pending_bubble_settles_when_quiet_or_a_later_bubble_comes(tmp_path: Path) -> None:
    db = global_db(tmp_path, "wal", "text")
    cid = new_uuid()
    stuck = make_assistant_bubble("half", timingInfo=OMIT, tokenCount=OMIT, toolFormerData=OMIT)
    db.put_bubble(cid, stuck)
    t0 = now_ms()
    r1 = read(db, GlobalBubbles(), ctx=ReadContext(t0, 0))
    assert r1.items == [] and len(r1.watermark["pending"]) == 1
    r2 = read(db, GlobalBubbles(), r1.watermark, ReadContext(t0 + 1000, 0))
    assert r2.items == []
    r3 = read(db, GlobalBubbles(), r2.watermark, ReadContext(t0 + SETTLE_QUIET_MS + 1, 0))
    (p,) = payloads(r3)
    assert p["settled_by"] == "quiet" and p["text"] == "half"
    # Another composer: a new bubble after the pending one settles it.
    cid2 = new_uuid()
    other = make_assistant_bubble("tool step", timingInfo=OMIT, tokenCount=OMIT)
    other["toolFormerData"]["status"] = "running"
    db.put_bubble(cid2, other)
    r4 = read(db, GlobalBubbles(), r3.watermark, ReadContext(t0, 0))
    assert r4.items == []
    db.put_bubble(cid2, make_user_bubble("next question"))
    r5 = read(db, GlobalBubbles(), r4.watermark, ReadContext(t0, 0))
    got = {p["role"]: p for p in payloads(r5)}
    assert got["assistant"]["settled_by"] == "later_bubble"


def test_rewrite_unchanged_is_not_resent_changed_is_a_revision(tmp_path: Path) -> None:
    db = global_db(tmp_path, "delete", "text")
    cid = new_uuid()
    b = make_assistant_bubble("v1")
    db.put_bubble(cid, b)
    r1 = read(db, GlobalBubbles())
    db.put_bubble(cid, b)  # Cursor rewrites it unchanged: new rowid, same content
    r2 = read(db, GlobalBubbles(), r1.watermark)
    assert r2.items == [] and r2.watermark["rowid"] > r1.watermark["rowid"]
    b["text"] = "v2"
    db.put_bubble(cid, b)
    (p,) = payloads(read(db, GlobalBubbles(), r2.watermark))
    assert (p["revision"], p["text"]) == (1, "v2")


def test_watermark_above_max_rowid_rescans_without_resending(tmp_path: Path) -> None:
    db = global_db(tmp_path, "delete", "text")
    db.put_conversation([make_user_bubble("a"), make_assistant_bubble("b")])
    r1 = read(db, GlobalBubbles())
    assert len(r1.items) == 2
    wm = {**r1.watermark, "rowid": r1.watermark["rowid"] + 1000}  # e.g. after VACUUM
    r2 = read(db, GlobalBubbles(), wm)
    assert r2.items == [] and r2.watermark["rowid"] == r1.watermark["rowid"]
    new = make_user_bubble("c")
    db.put_bubble(new_uuid(), new)
    r3 = read(db, GlobalBubbles(), {**r2.watermark, "rowid": 10**9})
    assert [p["bubble_id"] for p in payloads(r3)] == [new["bubbleId"]]


def test_sync_window_and_capture_content(tmp_path: Path) -> None:
    db = global_db(tmp_path, "wal", "text")
    old_t = now_ms() - 48 * 3_600_000
    old = make_user_bubble("old", createdAt="2020-01-01T00:00:00.000Z")
    recent = make_assistant_bubble("secret answer")
    recent["thinking"] = {"text": "secret thoughts"}
    db.put_bubble("c1", old)
    db.put_bubble("c1", recent)
    ctx = ReadContext(now_ms(), now_ms() - 24 * 3_600_000, capture_content=False)
    r = read(db, GlobalBubbles(), ctx=ctx)
    (p,) = payloads(r)
    assert p["bubble_id"] == recent["bubbleId"] and old_t  # the 2020 bubble is outside
    assert "text" not in p and p["text_length"] == len("secret answer")
    assert "thinking_text" not in p and p["thinking_length"] == len("secret thoughts")
    assert "params" not in p["tool_calls"][0] and p["tool_calls"][0]["params_length"] > 0
    assert "secret" not in json.dumps(p)


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_composer_headers(tmp_path: Path, mode: str, vtype: str) -> None:
    db = global_db(tmp_path, mode, vtype, headers=True)
    row = make_composer_header(workspaceId="sid9", isArchived=1)
    db.put_composer_header(row)
    db.put_composer_header(make_composer_header(value="{bad"))
    r = read(db, ComposerHeadersTable())
    got = payloads(r)
    assert len(got) == 2 and "not valid JSON" in r.problems[0]
    first = next(p for p in got if p["composer_id"] == row["composerId"])
    assert first["record"] == "header" and first["is_archived"] is True
    assert first["name"] == "Explain"
    assert {i.workspace_storage_id for i in r.items} == {"sid9", None}
    assert read(db, ComposerHeadersTable(), r.watermark).items == []
    db.put_composer_header({**row, "lastUpdatedAt": row["lastUpdatedAt"] + 5})
    (upd,) = payloads(read(db, ComposerHeadersTable(), r.watermark))
    assert upd["revision"] == 1


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_agent_kv_blobs(tmp_path: Path, mode: str, vtype: str) -> None:
    db = global_db(tmp_path, mode, vtype)
    db.put_agent_blob("user", "hello agent")
    db.put_agent_blob("assistant", [{"type": "text", "text": "hi"}, {"type": "image"}])
    db.write_raw("agentKv:blob:" + "0" * 64, "{nope", "cursorDiskKV")
    db.write_raw("agentKv:blob:" + "1" * 64, '{"state": 1}', "cursorDiskKV")
    r = read(db, AgentKvBlobs())
    got = payloads(r)
    assert [(p["role"], p["text"]) for p in got] == [("user", "hello agent"), ("assistant", "hi")]
    assert all("composer_id" not in p and "model" not in p for p in got)
    assert "not valid JSON" in r.problems[0]


def test_auth_keys_are_never_read(tmp_path: Path) -> None:
    ud = make_user_dir(tmp_path)
    db = ud.global_db("wal", "text", composer_headers=True)
    db.put_conversation()
    db.put_agent_blob()
    db.put_composer_header()
    db.write_batch({"cursorAuth/accessToken": FAKE_ACCESS_TOKEN}, "cursorDiskKV")
    seen: list[str] = []

    def fetch_all(conn: sqlite3.Connection) -> list[Any]:
        conn.set_trace_callback(seen.append)
        det = SchemaDetector().detect(conn)
        return [layout.fetch(conn, {}) for layout in det.layouts]

    raws = ReadOnlyDatabase(db.path, 2.0).read_sync(fetch_all)
    dumped = repr(raws)
    assert FAKE_ACCESS_TOKEN not in dumped and FAKE_REFRESH_TOKEN not in dumped
    assert not any("LIKE" in s.upper() for s in seen)
    assert len(ALL_LAYOUTS) >= 9


# --------------------------------------------------------------------------- the real 2024 database


def test_real_2024_database_captured_completely(real_fixture: Path) -> None:
    uri = f"file:{real_fixture}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        det = SchemaDetector().detect(conn)
        raws = {layout.name: (layout, layout.fetch(conn, {})) for layout in det.layouts}
        # Independent count: SQLite's JSON functions over the raw values.
        n_composers, n_bubbles = conn.execute(
            "SELECT COUNT(DISTINCT c.value ->> '$.composerId'), "
            "SUM(json_array_length(c.value -> '$.conversation')) "
            "FROM ItemTable, json_each(ItemTable.value, '$.allComposers') AS c "
            "WHERE ItemTable.key = 'composer.composerData'"
        ).fetchone()
        n_tabs, n_chat_bubbles = conn.execute(
            "SELECT COUNT(*), SUM(json_array_length(t.value -> '$.bubbles')) "
            "FROM ItemTable, json_each(ItemTable.value, '$.tabs') AS t "
            "WHERE ItemTable.key = 'workbench.panel.aichat.view.aichat.chatdata'"
        ).fetchone()
        (n_prompts,) = conn.execute(
            "SELECT json_array_length(value) FROM ItemTable WHERE key = 'aiService.prompts'"
        ).fetchone()
    finally:
        conn.close()
    assert set(raws) == {"itemtable_prompts", "workspace_composer_data", "legacy_chatdata"}
    ctx = ReadContext(now_ms=now_ms(), sync_cutoff_ms=0)
    results = {name: lay.extract(raw, {}, ctx) for name, (lay, raw) in raws.items()}
    assert all(r.problems == [] for r in results.values())
    comp = results["workspace_composer_data"]
    chat = results["legacy_chatdata"]
    assert len(payloads(comp, "composer")) == n_composers == 26
    assert len(payloads(comp, "message")) == n_bubbles == 82
    assert len(payloads(chat, "composer")) == n_tabs
    assert len(payloads(chat, "message")) == n_chat_bubbles
    assert len(results["itemtable_prompts"].items) == n_prompts
    roles = {m["role"] for m in payloads(comp, "message") + payloads(chat, "message")}
    assert roles == {"user", "assistant"}
    models = {m.get("model") for m in payloads(chat, "message") if m["role"] == "assistant"}
    assert "claude-3.5-sonnet" in models
    all_ids = [i.dedup_id for r in results.values() for i in r.items]
    assert len(all_ids) == len(set(all_ids))  # nothing would be sent twice


@pytest.mark.parametrize(("mode", "vtype"), MODES)
def test_bubbles_outside_the_window_are_left_unread_but_still_date_their_composer(
    tmp_path: Path, mode: str, vtype: str
) -> None:
    """The first sync of a big global database: old values are filtered by SQLite, not parsed."""
    db = global_db(tmp_path, mode, vtype)
    cutoff = now_ms() - 24 * 3_600_000
    old = make_user_bubble("old", createdAt="2020-01-01T00:00:00.000Z")
    untimed = make_user_bubble("sibling without a time", omit=["createdAt"])
    epoch_old = make_user_bubble("old, epoch ms", createdAt=cutoff - 10_000_000)
    odd_iso = make_user_bubble("old, with an offset", createdAt="2020-01-01T00:00:00+02:00")
    recent = make_user_bubble("recent")
    db.put_bubble("c-old", old)
    db.put_bubble("c-old", untimed)  # its only sibling with a time is left unread
    db.put_bubble("c-mixed", epoch_old)
    db.put_bubble("c-mixed", odd_iso)
    db.put_bubble("c-new", recent)
    layout = GlobalBubbles()
    raw = ReadOnlyDatabase(db.path, 2.0).read_sync(lambda conn: layout.fetch(conn, {}, cutoff))
    loaded = {k.rsplit(":", 1)[1] for _r, k, v in raw.scan.rows if isinstance(v, str | bytes)}
    # Only the plain ISO-UTC old bubble stays unread; every other form is parsed in Python.
    assert old["bubbleId"] not in loaded
    assert {untimed["bubbleId"], epoch_old["bubbleId"], odd_iso["bubbleId"]} <= loaded
    r = layout.extract(raw, {}, ReadContext(now_ms(), cutoff))
    # The untimed sibling takes its composer's (old) time: outside the window too.
    assert [p["bubble_id"] for p in payloads(r)] == [recent["bubbleId"]]
    assert layout.revision_keys(raw) == [
        f"m:{b['bubbleId']}" for b in (untimed, epoch_old, odd_iso, recent)
    ]


def test_a_session_start_re_read_leaves_old_bubbles_unread_too(tmp_path: Path) -> None:
    """The targeted re-read of a session's composers filters old values in SQLite as the
    scan does: a long history is not loaded and parsed at every session start."""
    db = global_db(tmp_path, "wal", "text")
    cutoff = now_ms() - 24 * 3_600_000
    old = make_user_bubble("old", createdAt="2020-01-01T00:00:00.000Z")
    recent = make_user_bubble("recent")
    db.put_bubble("c-1", old)
    db.put_bubble("c-1", recent)
    layout = GlobalBubbles()
    raw = ReadOnlyDatabase(db.path, 2.0).read_sync(
        lambda conn: layout.fetch_composers(conn, ["c-1"], cutoff)
    )
    loaded = {k.rsplit(":", 1)[1] for _r, k, v in raw.scan.rows if isinstance(v, str | bytes)}
    assert loaded == {recent["bubbleId"]}
    assert len(raw.scan.rows) == 2  # the old one is there, with its time only
    r = layout.extract(raw, {"replay": True}, ReadContext(now_ms(), cutoff))
    assert [p["bubble_id"] for p in payloads(r)] == [recent["bubbleId"]]


def test_revision_memories_of_the_older_hash_form_send_nothing_again() -> None:
    """The hash's form changed (pydantic's JSON, not a sorted ``json.dumps``): what an older
    version remembered is recognised, so an upgrade re-sends nothing, and is stored anew."""
    from blueplane.cursor.layouts.conversation import (
        Revisions,
        legacy_payload_hash,
        payload_hash,
        wire_message,
    )

    ctx = ReadContext(now_ms(), 0)
    msg = wire_message(
        make_assistant_bubble("déjà vu → ✓"), bubble_id="b", composer_id="c",
        ctx=ctx, source_layout="disk_bubbles",
    ).model()  # fmt: skip
    assert payload_hash(msg).startswith("v") and payload_hash(msg) != legacy_payload_hash(msg)
    revs = Revisions({"m:b": [legacy_payload_hash(msg), 3]})
    assert revs.stamp("m:b", msg) is None
    assert revs.entries["m:b"] == [payload_hash(msg), 3]
    old = Revisions({"m:b": [legacy_payload_hash(msg), 3]})
    changed = old.stamp("m:b", msg.model_copy(update={"text_length": 1}))
    assert changed is not None and changed.revision == 4


def test_a_pending_bubble_remembered_with_the_older_hash_keeps_its_quiet_time(
    tmp_path: Path,
) -> None:
    from blueplane.cursor.layouts.conversation import legacy_payload_hash, wire_message

    db = global_db(tmp_path, "wal", "text")
    bubble = make_assistant_bubble("streaming", omit=["timingInfo", "tokenCount"])
    db.put_bubble("c-1", bubble)
    key = f"bubbleId:c-1:{bubble['bubbleId']}"
    now = now_ms()
    ctx = ReadContext(now, 0)
    msg = wire_message(
        json.loads(json.dumps(bubble)), bubble_id=bubble["bubbleId"], composer_id="c-1",
        ctx=ctx, source_layout="disk_bubbles",
    ).model()  # fmt: skip
    since = now - SETTLE_QUIET_MS - 1
    wm: Watermark = {"rowid": 10**6, "pending": {key: [legacy_payload_hash(msg), since, 1]}}
    r = read(db, GlobalBubbles(), wm, ctx)
    assert [p["settled_by"] for p in payloads(r)] == ["quiet"]


def test_a_session_start_re_read_takes_the_newest_conversations_first(tmp_path: Path) -> None:
    """By each composer's newest bubble (its rowid, from the key index): the conversations in
    use go out before an old history that SQLite has to parse only to find it too old."""
    from blueplane.cursor.layouts.disk_bubbles import newest_first

    db = global_db(tmp_path, "wal", "text")
    for cid in ("b-old", "a-mid", "c-new"):
        db.put_bubble(cid, make_user_bubble(f"{cid} 1"))
    db.put_bubble("a-mid", make_user_bubble("a-mid 2"))  # now newer than b-old's
    db.put_bubble("c-new", make_user_bubble("c-new 2"))
    ro = ReadOnlyDatabase(db.path, 2.0)
    got = ro.read_sync(lambda conn: newest_first(conn, ["a-mid", "b-old", "c-new", "none"]))
    assert got == ["c-new", "a-mid", "b-old", "none"]
