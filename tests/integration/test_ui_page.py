"""The page in a real browser: Debian's chromium driven by Playwright, against ``blueplane ui``.

``.ci/run`` installs chromium where it is missing; Playwright's own browser download is never
used (``executable_path``). Screenshots go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blueplane.store import TraceStore
from blueplane.ui.sample import Expected, conversation_events, fill, generate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
NOW_MS = int(time.time() * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiServer:
    home: Path
    port: int
    proc: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def ui_env(home: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEPLANE_")}
    env.update(BLUEPLANE_HOME=str(home), BLUEPLANE_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def start_ui(redis_url: str) -> Iterator[Callable[[Path], UiServer]]:
    started: list[UiServer] = []

    def start(home: Path) -> UiServer:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "blueplane.cli", "ui", "--port", str(port)],
            env=ui_env(home, redis_url), cwd=home, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = UiServer(home, port, proc)
        started.append(server)

        def listening() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, timeout=30, what=f"blueplane ui on port {port}")
        return server

    yield start
    for server in started:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ctx.close()
    assert not errors, f"errors in the page: {errors}"


def shot(pg: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def known_store(home: Path) -> Expected:
    store = TraceStore(home / "telemetry.db")
    batches, expected = generate(600, workspaces=3, turns=4, end_ms=NOW_MS, span_days=14, seed=11)
    fill(store, batches)
    store.close()
    return expected


def text_int(pg: object, selector: str) -> int:
    return int(pg.text_content(selector).replace(",", ""))  # type: ignore[attr-defined]


def test_charts_show_the_stored_totals_and_a_new_trace_appears_live(
    tmp_path: Path, start_ui: Callable[[Path], UiServer], page: object
) -> None:
    expected = known_store(tmp_path)
    server = start_ui(tmp_path)
    pg = page
    pg.goto(server.url)  # type: ignore[attr-defined]
    pg.wait_for_selector("body[data-ready='1']")  # type: ignore[attr-defined]
    assert pg.is_hidden("#empty-notice")  # type: ignore[attr-defined]
    assert text_int(pg, "#total-traces") == expected.traces
    assert text_int(pg, "#total-turns") == expected.turns
    assert text_int(pg, "#total-input") == expected.input_tokens
    assert text_int(pg, "#total-output") == expected.output_tokens
    act = pg.locator("#chart-activity")  # type: ignore[attr-defined]
    assert int(act.get_attribute("data-sum-traces")) == expected.traces
    assert int(act.get_attribute("data-sum-turns")) == expected.turns
    tok = pg.locator("#chart-tokens")  # type: ignore[attr-defined]
    assert int(tok.get_attribute("data-sum-input-tokens")) == expected.input_tokens
    assert int(tok.get_attribute("data-sum-output-tokens")) == expected.output_tokens
    for chart in ("#chart-activity", "#chart-hourly", "#chart-tokens"):
        assert pg.locator(f"{chart} canvas").count() == 1  # type: ignore[attr-defined]
    models = {
        row.get_attribute("data-model"): int(row.get_attribute("data-turns"))
        for row in pg.locator("#models tbody tr").all()  # type: ignore[attr-defined]
    }
    assert models == expected.per_model_turns
    # Server health: the facts of `blueplane status` (no server here; Redis answers).
    wait_until(lambda: "stream length" in (pg.text_content("#health") or ""), what="health")
    assert pg.text_content("#health-badge") == "server not running"
    shot(pg, "overview")

    # Filter by one workspace: the totals are that workspace's.
    ws, n = sorted(expected.per_workspace_traces.items())[0]
    pg.select_option("#workspace", ws)  # type: ignore[attr-defined]
    wait_until(lambda: text_int(pg, "#total-traces") == n, what="the workspace's totals")
    assert all(
        row.get_attribute("data-event-id")
        for row in pg.locator("#feed li").all()  # type: ignore[attr-defined]
    )
    pg.select_option("#workspace", "")  # type: ignore[attr-defined]
    wait_until(lambda: text_int(pg, "#total-traces") == expected.traces, what="all again")

    # A new trace, written as the consumer writes it, shows without a reload.
    pg.evaluate("window.__notReloaded = true")  # type: ignore[attr-defined]
    extra = Expected()
    import random

    new = conversation_events(
        9_999, "conv-live-1", "Live trace zebra", "00000000000000aa", NOW_MS, 1, "gpt-5",
        random.Random(1), extra,
    )  # fmt: skip
    writer = TraceStore(tmp_path / "telemetry.db")
    written_at = time.monotonic()
    writer.write_batch(new, 0)
    writer.close()
    answer = next(e for e in new if e.payload.get("role") == "assistant")
    pg.wait_for_selector(f"#feed li[data-event-id='{answer.event_id}']", timeout=5000)  # type: ignore[attr-defined]
    shown_after = time.monotonic() - written_at
    assert shown_after < 3.0, f"the new trace took {shown_after:.1f} s"
    assert pg.evaluate("window.__notReloaded === true")  # type: ignore[attr-defined]
    assert text_int(pg, "#total-traces") == expected.traces + extra.traces
    assert "Answer 0" in pg.text_content(f"#feed li[data-event-id='{answer.event_id}']")  # type: ignore[attr-defined]
    shot(pg, "live-feed")


def test_an_empty_store_is_an_empty_page_that_says_so(
    tmp_path: Path, start_ui: Callable[[Path], UiServer], page: object
) -> None:
    server = start_ui(tmp_path)  # no store at all
    pg = page
    pg.goto(server.url)  # type: ignore[attr-defined]
    pg.wait_for_selector("body[data-ready='1']")  # type: ignore[attr-defined]
    assert pg.is_visible("#empty-notice")  # type: ignore[attr-defined]
    assert "Nothing captured yet" in pg.text_content("#empty-notice")  # type: ignore[attr-defined]
    assert text_int(pg, "#total-traces") == 0
    shot(pg, "empty")
    # Then the first trace arrives: the page fills in without a reload.
    store = TraceStore(tmp_path / "telemetry.db")
    batches, expected = generate(30, workspaces=1, turns=2, end_ms=NOW_MS, span_days=1)
    fill(store, batches)
    store.close()
    wait_until(lambda: text_int(pg, "#total-traces") == expected.traces, what="first traces")
    assert pg.is_hidden("#empty-notice")  # type: ignore[attr-defined]


def test_search_finds_a_conversation_and_its_page_shows_turns_and_tokens(
    tmp_path: Path, start_ui: Callable[[Path], UiServer], page: object
) -> None:
    conversations = pytest.importorskip("blueplane.conversations")
    known_store(tmp_path)
    conv_id, title = "conv-zebra-1", "Quagga zebra crossing"
    writer = TraceStore(tmp_path / "telemetry.db")
    import random

    writer.write_batch(conversation_events(
        50_000, conv_id, title, "00000000000000bb", NOW_MS - 3_600_000, 4, "gpt-5",
        random.Random(5), Expected(),
    ), 0)  # fmt: skip
    writer.close()
    store = TraceStore(tmp_path / "telemetry.db", readonly=True)
    got = conversations.get_conversation(store, conv_id)
    store.close()
    assert got is not None
    conv, turns = got
    server = start_ui(tmp_path)
    pg = page
    pg.goto(server.url)  # type: ignore[attr-defined]
    pg.wait_for_selector("body[data-ready='1']")  # type: ignore[attr-defined]
    assert pg.locator("input[type=search]#search").count() == 1  # type: ignore[attr-defined]
    assert pg.locator("#conversations li").count() > 1  # type: ignore[attr-defined]
    pg.fill("#search", "zebra quag")  # type: ignore[attr-defined]
    wait_until(
        lambda: pg.locator("#conversations li").count() == 1,  # type: ignore[attr-defined]
        what="the search to leave one conversation",
    )
    link = pg.locator(f"#conversations li[data-conversation-id='{conv_id}'] a")  # type: ignore[attr-defined]
    assert link.text_content() == title
    shot(pg, "search")
    link.click()
    pg.wait_for_selector("#turns .turn")  # type: ignore[attr-defined]
    arts = pg.locator("#turns .turn").all()  # type: ignore[attr-defined]
    assert len(arts) == len(turns) == 4
    for art, turn in zip(arts, turns, strict=True):
        assert art.get_attribute("data-input-tokens") == str(turn.input_tokens)
        assert art.get_attribute("data-output-tokens") == str(turn.output_tokens)
        assert (turn.response or "")[:40] in art.text_content()
    assert pg.text_content("#conversation-title") == title  # type: ignore[attr-defined]
    meta = pg.text_content("#conversation-meta")  # type: ignore[attr-defined]
    assert f"{conv.input_tokens:,} in / {conv.output_tokens:,} out tokens" in meta
    assert f"{len(turns)} turns" in meta
    shot(pg, "conversation")


def test_port_in_use_and_other_bind_addresses_are_clear_errors(
    tmp_path: Path, redis_url: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "blueplane.cli", "ui", "--port", str(port)],
            env=ui_env(tmp_path, redis_url), cwd=tmp_path, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        proc = subprocess.run(
            [sys.executable, "-m", "blueplane.cli", "ui", "--host", host],
            env=ui_env(tmp_path, redis_url), cwd=tmp_path, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "refusing to listen on" in proc.stderr and "127.0.0.1 only" in proc.stderr


def test_ci_installs_chromium() -> None:
    """The browser tests need Debian's chromium; ``.ci/run`` installs it where it is missing."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y chromium" in script
    assert shutil.which("chromium") or CHROMIUM.exists()
