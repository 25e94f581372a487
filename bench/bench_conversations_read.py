"""Reading the reconciled conversation tables: per-day token totals, the list, one conversation.

A store with 20,000 conversations of 10 turns each (200,000 turns: the turns of well over 1 M
traces) is filled directly, then each read is timed (mean of 5 after one warm-up).

    .venv/bin/python bench/bench_conversations_read.py

Writes ``bench/results/conversations_read.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane import conversations as cv  # noqa: E402
from blueplane.store import TraceStore  # noqa: E402

T0 = 1_760_000_000_000
DAY = 86_400_000
CONVERSATIONS, TURNS = 20_000, 10


def fill(store: TraceStore) -> None:
    c = store.conn
    c.execute("BEGIN")
    c.executemany(
        "INSERT INTO conv_conversations VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(f"c{i}", f"{i % 20:016x}", None, f"title {i}", None, T0 + i * 60_000,
          T0 + i * 60_000 + 600_000) for i in range(CONVERSATIONS)],
    )  # fmt: skip
    rows = []
    for i in range(CONVERSATIONS):
        for k in range(TURNS):
            at = T0 + i * 60_000 + k * 1000
            rows.append((f"c{i}", f"g{i}-{k}", f"g{i}-{k}", k, "m", 1000, 100, 10, 1, "stop",
                         at, at // DAY, at + 500))  # fmt: skip
    c.executemany(
        "INSERT INTO conv_turns (conversation_id, turn_key, generation_id, ordinal, model,"
        " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, token_source,"
        " started_ms, started_day, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    c.executemany(
        "INSERT INTO conv_sources VALUES (?, ?, ?)",
        [(f"c{i}", "", "hook") for i in range(CONVERSATIONS)],
    )
    c.execute("COMMIT")


def timed(f: Callable[[], object]) -> float:
    f()
    started = time.perf_counter()
    for _ in range(5):
        f()
    return round((time.perf_counter() - started) / 5 * 1000, 2)


def main() -> None:
    store = TraceStore(Path(tempfile.mkdtemp()) / "t.db")
    fill(store)
    last_week = T0 + CONVERSATIONS * 60_000 - 7 * DAY
    reads = {
        "token_totals_by_day, all 200k turns": lambda: cv.token_totals_by_day(store),
        "token_totals_by_day, last 7 days": lambda: cv.token_totals_by_day(
            store, since_ms=last_week
        ),
        "list_conversations, newest 50": lambda: cv.list_conversations(store),
        "list_conversations, one workspace": lambda: cv.list_conversations(
            store, workspace=f"{3:016x}"
        ),
        "get_conversation": lambda: cv.get_conversation(store, "c123"),
    }
    result = {name: timed(f) for name, f in reads.items()}
    store.close()
    out = {"ms": result, "load_avg": os.getloadavg(), "turns": CONVERSATIONS * TURNS}
    (ROOT / "bench" / "results" / "conversations_read.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    for name, ms in result.items():
        print(f"| {name} | {ms} ms |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
