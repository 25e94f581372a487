"""The page's data on both stores: the search index, the activity tables, the JSON endpoints and
the exports give the same answers on a SQLite file and on a real PostgreSQL for the same events.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the tests install
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from blueplane.config import load_settings
from blueplane.search import search_conversation_ids, search_event_ids
from blueplane.store import StoredEvent
from blueplane.stores import open_store
from blueplane.ui import queries
from blueplane.ui.app import create_app
from blueplane.ui.sample import generate
from tests.unit.test_search_and_activity import END_MS, answer

pytestmark = pytest.mark.integration

SUMS = "SUM(traces), SUM(turns), SUM(input_tokens), SUM(output_tokens)"


@pytest.fixture
def urls(tmp_path: Path, pg_url: str) -> dict[str, str]:
    return {"sqlite": f"sqlite://{tmp_path / 'store' / 'telemetry.db'}", "postgres": pg_url}


def _feed_set(feed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feed without what differs by store (when it was received, SQLite's rowid), in an
    order that does not depend on how each store breaks ties of equal times."""
    kept = [{k: v for k, v in f.items() if k not in ("rowid", "received_at_ms")} for f in feed]
    return sorted(kept, key=lambda f: (-(f["timestamp_ms"] or 0), f["event_id"]))


def _write(url: str, batches: list[list[StoredEvent]]) -> None:
    store = open_store(url)
    try:
        for batch in batches:
            store.write_batch(batch, 0.0)
    finally:
        store.close()


def _totals(url: str) -> tuple[int, ...]:
    store = open_store(url, readonly=True)
    try:
        hourly = store.conn.execute(f"SELECT {SUMS} FROM activity_hourly").fetchone()
        daily = store.conn.execute(f"SELECT {SUMS} FROM activity_daily").fetchone()
    finally:
        store.close()
    assert tuple(hourly) == tuple(daily)
    return tuple(int(v or 0) for v in hourly)


def _sample() -> list[list[StoredEvent]]:
    batches, _ = generate(400, workspaces=3, turns=3, end_ms=END_MS, span_days=5)
    return list(batches)


def test_search_finds_the_same_on_both(urls: dict[str, str]) -> None:
    batch = [
        answer(1, "conv-a", "The flaky checkout test was a timezone problem", 10, 5),
        answer(2, "conv-b", "Rename the helper; résumé parsing now strips accents", 10, 5),
        answer(3, "conv-c", 'Quotes " and * and AND OR NOT & | ! are just text', 10, 5),
    ]
    for kind, url in urls.items():
        _write(url, [batch])
        store = open_store(url, readonly=True)
        try:
            found = lambda q, s=store: search_conversation_ids(s, q)  # noqa: E731
            assert found("checkout timez") == ["conv-a"], kind
            assert found("CHECKOUT") == ["conv-a"], kind
            assert found("resume") == ["conv-b"] and found("résumé") == ["conv-b"], kind
            assert found('and " OR') == ["conv-c"] and found("& | !") == [], kind
            assert found("checkout rename") == [], kind  # all words must match
            assert found("  ***  ") == [], kind
            assert search_event_ids(store, "helper") == ["ev-2-conv-b-a-0"], kind
        finally:
            store.close()


def test_activity_counts_revisions_and_duplicates_the_same_on_both(urls: dict[str, str]) -> None:
    for url in urls.values():
        _write(url, [[answer(1, "c", "draft", None, None)]])
        assert _totals(url) == (1, 1, 0, 0)
        _write(url, [[answer(1, "c", "settled", 1200, 300, revision=1)]])
        _write(url, [[answer(1, "c", "settled", 1250, 310, revision=2)]])
        assert _totals(url) == (3, 1, 1250, 310)  # three stored revisions, one turn
        store = open_store(url)
        try:
            r = store.write_batch([answer(1, "c", "settled", 1250, 310, revision=2)], 0)
        finally:
            store.close()
        assert r.duplicates == 1 and _totals(url) == (3, 1, 1250, 310)


def test_overview_feed_and_workspaces_the_same_on_both(urls: dict[str, str]) -> None:
    batches = _sample()
    got: dict[str, Any] = {}
    for kind, url in urls.items():
        _write(url, batches)
        with queries.StoreReader(url).connect() as conn:
            ov = queries.overview(conn, None, now_ms=END_MS).to_json()
            assert ov["last_rowid"] == sum(len(b) for b in batches), kind
            ov.pop("last_rowid")
            ws = queries.workspace_list(conn)
            one = queries.overview(conn, ws[0], now_ms=END_MS).to_json()
            one.pop("last_rowid")
            feed = _feed_set(queries.feed(conn, ws[0], 10))
        got[kind] = (ov, ws, one, feed)
    assert got["postgres"] == got["sqlite"]
    ov = got["postgres"][0]
    assert not ov["empty"] and ov["totals"]["traces"] == sum(len(b) for b in batches)


def _client(monkeypatch: pytest.MonkeyPatch, home: Path, url: str) -> TestClient:
    monkeypatch.setenv("BLUEPLANE_STORE_URL", url)
    return TestClient(create_app(load_settings(home=home)))


def test_the_pages_json_endpoints_the_same_on_both(
    urls: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _sample()
    got: dict[str, Any] = {}
    for kind, url in urls.items():
        home = tmp_path / kind
        home.mkdir()
        client = _client(monkeypatch, home, url)
        assert client.get("/api/version").json() == {"last_rowid": 0}
        events = [ev for b in batches for ev in b]
        _write(url, [events[: len(events) // 2]])
        before = client.get("/api/version").json()["last_rowid"]
        _write(url, [events[len(events) // 2 :]])
        after = client.get("/api/version").json()["last_rowid"]
        assert after > before > 0, kind  # the page sees the store grow
        listed = client.get("/api/conversations").json()
        cid = listed["conversations"][0]["conversation_id"]
        title = listed["conversations"][0]["title"]
        searched = client.get("/api/conversations", params={"q": title}).json()
        assert cid in [c["conversation_id"] for c in searched["conversations"]], kind
        one = client.get(f"/api/conversations/{cid}").json()
        assert client.get("/api/conversations/nope").status_code == 404
        overview = client.get("/api/overview").json()
        overview.pop("last_rowid")
        tokens = client.get("/api/tokens").json()
        wss = client.get("/api/workspaces").json()
        feed = client.get("/api/feed", params={"workspace": wss["workspaces"][0]["workspace_hash"]})
        traces = _feed_set(feed.json()["traces"])
        got[kind] = (listed, searched, one, tokens, wss, traces, overview)
    assert got["postgres"][:6] == got["sqlite"][:6]
    # the overview's 48 hours end now: both made within the same hour, so equal too
    assert got["postgres"][6]["totals"] == got["sqlite"][6]["totals"]
    assert got["postgres"][6]["daily"] == got["sqlite"][6]["daily"]


def _cli(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(BLUEPLANE_HOME=str(home), BLUEPLANE_STORE_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "blueplane.cli", *args],
        env=env, capture_output=True, text=True, timeout=120, cwd=home,
    )  # fmt: skip


def test_exports_the_same_on_both(urls: dict[str, str], tmp_path: Path) -> None:
    batches = _sample()
    out: dict[str, Any] = {}
    for kind, url in urls.items():
        _write(url, batches)
        home = tmp_path / kind
        home.mkdir()
        files = {}
        for fmt in ("jsonl", "csv"):
            proc = _cli(home, url, "export", "--format", fmt)
            assert proc.returncode == 0, proc.stderr
            files[fmt] = proc.stdout
        md = home / "md"
        proc = _cli(home, url, "export", "--format", "markdown", "--output", str(md))
        assert proc.returncode == 0, proc.stderr
        files["markdown"] = {p.name: p.read_text() for p in sorted(md.iterdir())}
        out[kind] = files
    pg, lite = out["postgres"], out["sqlite"]
    assert pg["markdown"] and all(text.startswith("# ") for text in pg["markdown"].values())
    assert pg["markdown"] == lite["markdown"]
    assert _records(pg["jsonl"]) == _records(lite["jsonl"])
    assert len(pg["jsonl"].splitlines()) == sum(len(b) for b in batches)
    assert _csv_rows(pg["csv"]) == _csv_rows(lite["csv"])


def _records(jsonl: str) -> list[dict[str, Any]]:
    """The records without when each store received them (write time), in event_id order."""
    out = [json.loads(line) for line in jsonl.splitlines()]
    for r in out:
        r.pop("received_at_ms")
    return sorted(out, key=lambda r: r["event_id"])


def _csv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    drop = rows[0].index("received_at_ms")
    return [rows[0], *sorted([c for k, c in enumerate(r) if k != drop] for r in rows[1:])]


def test_an_older_postgres_store_gets_its_index_and_activity_once(pg_url: str) -> None:
    batches = _sample()
    _write(pg_url, batches)
    expected = _totals(pg_url)
    store = open_store(pg_url, readonly=True)
    title_conv = search_conversation_ids(store, "refactor parser", limit=500)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as a schema-4 store left it
        for table in ("trace_text", "activity_hourly", "activity_daily"):
            conn.execute(f"DROP TABLE {table}")  # type: ignore[arg-type]
        conn.execute("DELETE FROM store_meta WHERE key = 'derived_version'")
        conn.execute("UPDATE store_meta SET value = '4' WHERE key = 'schema_version'")
    reader = open_store(pg_url, readonly=True)  # a reader of the older store: from the events
    try:
        assert search_conversation_ids(reader, "refactor") == []
        with queries.StoreReader(pg_url).connect() as conn:
            assert queries.overview(conn, None).totals.traces == expected[0]
    finally:
        reader.close()
    open_store(pg_url).close()  # a writer of this version builds them once
    assert _totals(pg_url) == expected
    store = open_store(pg_url, readonly=True)
    try:
        assert search_conversation_ids(store, "refactor parser", limit=500) == title_conv
    finally:
        store.close()


def test_two_writers_at_once_count_and_index_everything_once(urls: dict[str, str]) -> None:
    from tests.integration.test_store_parity import _at_once

    events = [ev for b in _sample() for ev in b]
    halves = [events[0::2], events[1::2]]
    work = [[h[i : i + 50] for i in range(0, len(h), 50)] for h in halves]
    got = {}
    for kind, url in urls.items():
        _at_once(url, work)
        got[kind] = _totals(url)
        store = open_store(url, readonly=True)
        try:
            n = store.conn.execute("SELECT COUNT(*) FROM trace_text").fetchone()[0]
            assert int(n) == sum(1 for ev in events if derived_text(ev)), kind
        finally:
            store.close()
    assert got["postgres"] == got["sqlite"]
    assert got["postgres"][0] == len(events)


def derived_text(ev: StoredEvent) -> bool:
    from blueplane.derived import stage_row

    return stage_row(ev)[1] is not None


def test_blueplane_ui_serves_a_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    import socket
    import urllib.request

    from tests.conftest import wait_until

    _write(pg_url, _sample())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(BLUEPLANE_HOME=str(tmp_path), BLUEPLANE_STORE_URL=pg_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "blueplane.cli", "ui", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(answers, timeout=30, what="blueplane ui on a PostgreSQL store")
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/overview", timeout=10) as r:
            overview = json.loads(r.read())
        with urllib.request.urlopen(f"{base}/api/conversations?q=refactor", timeout=10) as r:
            found = json.loads(r.read())
        assert not overview["empty"] and overview["totals"]["traces"] > 0
        assert found["conversations"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_redelivered_batches_are_counted_and_indexed_once_on_both(urls: dict[str, str]) -> None:
    """A consumer that dies after its commit and before its XACK writes the batch again, here
    within a batch of new events: the activity sums and the search index count each event once
    (PostgreSQL stages the whole batch and applies only what this write kept)."""
    events = [ev for batch in _sample() for ev in batch]
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    assert len(batches) >= 3

    def indexed(url: str) -> int:
        store = open_store(url, readonly=True)
        try:
            return int(store.conn.execute("SELECT count(*) FROM trace_text").fetchone()[0])
        finally:
            store.close()

    _write(urls["sqlite"], batches)
    once = (_totals(urls["sqlite"]), indexed(urls["sqlite"]))
    assert once[0][0] > 0 and once[1] > 0
    _write(urls["postgres"], [*batches[:-1], batches[-1] + batches[0] + batches[1]])
    assert (_totals(urls["postgres"]), indexed(urls["postgres"])) == once
