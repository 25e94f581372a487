"""``blueplane export`` and ``traces --json``: streamed, the same records, documented columns."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from blueplane.export import CSV_COLUMNS, conversation_markdown, markdown_file_name
from blueplane.store import TraceStore
from blueplane.ui.sample import fill, generate

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
END_MS = 1_795_000_000_000  # 2026-11-18


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env["BLUEPLANE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "blueplane.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, cwd=home,
    )  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = TraceStore(tmp_path / "telemetry.db")
    batches, _ = generate(400, workspaces=2, turns=3, end_ms=END_MS, span_days=5)
    fill(store, batches)
    store.close()
    return tmp_path


def stored_records(home: Path) -> list[dict]:
    store = TraceStore(home / "telemetry.db", readonly=True)
    try:
        return store.traces(limit=1_000_000)
    finally:
        store.close()


def test_jsonl_round_trips_to_the_records_of_traces_json(home: Path) -> None:
    proc = run_cli(home, "export", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in proc.stdout.splitlines()]
    records = stored_records(home)
    key = lambda r: r["event_id"]  # noqa: E731
    assert len(exported) == len(records) == 400
    assert sorted(exported, key=key) == sorted(records, key=key)
    times = [r["timestamp_ms"] for r in exported]
    assert times == sorted(times)  # oldest first
    # traces --json: the same records, the newest N oldest first, valid JSON.
    proc = run_cli(home, "traces", "--json", "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == records
    proc = run_cli(home, "traces", "--json", "--limit", "5")
    assert json.loads(proc.stdout) == records[-5:]


def test_export_filters_by_workspace_and_since(home: Path, tmp_path: Path) -> None:
    records = stored_records(home)
    ws = records[0]["workspace_hash"]
    out = tmp_path / "out" / "ws.jsonl"
    proc = run_cli(home, "export", "--format", "jsonl", "--workspace", ws, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got and {r["workspace_hash"] for r in got} == {ws}
    assert len(got) == sum(r["workspace_hash"] == ws for r in records)
    cut = sorted(r["timestamp_ms"] for r in records)[len(records) // 2]
    since = next(r["timestamp"] for r in records if r["timestamp_ms"] == cut)
    proc = run_cli(home, "export", "--format", "jsonl", "--since", since)
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert got and all(r["timestamp_ms"] >= cut for r in got)
    assert len(got) == sum(r["timestamp_ms"] >= cut for r in records)


def test_csv_has_the_documented_columns(home: Path) -> None:
    proc = run_cli(home, "export", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert tuple(rows[0].keys()) == CSV_COLUMNS == (
        "event_id", "timestamp", "timestamp_ms", "received_at_ms", "workspace_hash",
        "session_id", "trace_type", "generation_id", "revision", "conversation_id", "role",
        "model", "input_tokens", "output_tokens", "text", "sources",
    )  # fmt: skip
    records = {r["event_id"]: r for r in stored_records(home)}
    assert len(rows) == len(records)
    answers = [r for r in rows if r["role"] == "assistant"]
    assert answers
    for row in answers:
        p = records[row["event_id"]]["payload"]
        assert int(row["input_tokens"]) == p["input_tokens"]
        assert int(row["output_tokens"]) == p["output_tokens"]
        assert row["model"] == p["model"] and row["text"] == p["text"]
        assert row["conversation_id"] == p["composer_id"]
        assert row["sources"] == "python_monitor"


@pytest.mark.parametrize("command", [("export", "--format", "jsonl"), ("traces", "--json")])
def test_since_nonsense_exits_2_with_a_message(home: Path, command: tuple[str, ...]) -> None:
    proc = run_cli(home, *command, "--since", "nonsense")
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr and "ISO 8601" in proc.stderr
    assert proc.stdout == ""


def test_markdown_without_output_folder_exits_2(home: Path) -> None:
    proc = run_cli(home, "export", "--format", "markdown")
    assert proc.returncode == 2 and "--output" in proc.stderr


def test_empty_install_exports_nothing(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "export", "--format", "csv")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [",".join(CSV_COLUMNS)]
    assert run_cli(tmp_path, "traces", "--json").stdout.strip() == "[]"


def _sample_conversation() -> tuple[SimpleNamespace, list[SimpleNamespace]]:
    conv = SimpleNamespace(
        conversation_id="3f2c9a10-77aa-4b1e-9c4d-0a1b2c3d4e5f", workspace_hash="ab12cd34ef56ab78",
        workspace_path="/home/dev/projects/shop", title="Fix the checkout total rounding",
        models=["claude-4.5-sonnet"], turns=2, input_tokens=15230, output_tokens=1840,
        cache_read_tokens=12000, cache_write_tokens=None, first_at="2026-11-20T09:15:02Z",
        last_at="2026-11-20T09:21:40Z", sources=["database", "hook"],
    )  # fmt: skip
    tool = SimpleNamespace
    turns = [
        SimpleNamespace(
            generation_id="g-1", prompt="Why is the total 0.01 off for three items?",
            response="The sum is rounded per line. Round once, on the total:\n\n"
                     "```python\ntotal = round(sum(prices), 2)\n```",
            model="claude-4.5-sonnet", input_tokens=7100, output_tokens=940,
            cache_read_tokens=6000, cache_write_tokens=None, started_at="2026-11-20T09:15:02Z",
            ended_at="2026-11-20T09:15:20Z", duration_ms=18000,
            tools=[tool(name="read_file", duration_ms=120, ok=True),
                   tool(name="run_terminal_cmd", duration_ms=2300, ok=False)],
            sources=["database", "hook"],
        ),
        SimpleNamespace(
            generation_id="g-2", prompt="Add a test for it.", response=None,
            model="claude-4.5-sonnet", input_tokens=8130, output_tokens=900,
            cache_read_tokens=6000, cache_write_tokens=None, started_at="2026-11-20T09:21:00Z",
            ended_at=None, duration_ms=None, tools=[], sources=["database"],
        ),
    ]  # fmt: skip
    return conv, turns


def test_markdown_matches_the_golden_file() -> None:
    conv, turns = _sample_conversation()
    assert markdown_file_name(conv) == "2026-11-20-fix-the-checkout-total-rounding-3f2c9a10.md"
    text = conversation_markdown(conv, turns)
    golden = GOLDEN / "conversation.md"
    if os.environ.get("BLUEPLANE_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_markdown_export_writes_one_readable_file_per_conversation(
    home: Path, tmp_path: Path
) -> None:
    conversations = pytest.importorskip("blueplane.conversations")
    out = tmp_path / "history"
    proc = run_cli(home, "export", "--format", "markdown", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    store = TraceStore(home / "telemetry.db", readonly=True)
    try:
        convs = conversations.list_conversations(store, limit=100_000)
        files = sorted(p.name for p in out.iterdir())
        assert len(files) == len(convs) > 1
        conv = convs[0]
        full, turns = conversations.get_conversation(store, conv.conversation_id)
    finally:
        store.close()
    name = markdown_file_name(full)
    assert name in files and name.startswith(full.first_at[:10])
    text = (out / name).read_text(encoding="utf-8")
    assert text.startswith(f"# {full.title}\n")
    assert f"- Tokens: {full.input_tokens:,} in, {full.output_tokens:,} out" in text
    assert text.count("**Assistant**") == len(turns) == full.turns
    assert turns[0].response.strip() in text
    # --since keeps only the conversations active since then.
    proc = run_cli(home, "export", "--format", "markdown", "--output", str(tmp_path / "none"),
                   "--since", "2030-01-01T00:00:00Z")  # fmt: skip
    assert proc.returncode == 0 and list((tmp_path / "none").iterdir()) == []


@pytest.mark.integration
def test_export_and_traces_json_read_a_postgresql_store(tmp_path: Path, pg_url: str) -> None:
    from blueplane.stores import open_store

    store = open_store(pg_url)
    batches, _ = generate(120, workspaces=2, turns=2, end_ms=END_MS, span_days=2)
    fill(store, batches)
    records = store.traces(limit=10_000)
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(BLUEPLANE_HOME=str(tmp_path), BLUEPLANE_STORE_URL=pg_url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "blueplane.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip

    proc = cli("export", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(exported, key=lambda r: r["event_id"]) == sorted(
        records, key=lambda r: r["event_id"]
    )
    proc = cli("traces", "--json", "--limit", "10")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == records[-10:]
