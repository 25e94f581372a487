"""What keeping the conversation tables costs the store's writer.

20,000 ``message`` traces (500 conversations of 20 bubbles, every assistant bubble with a
request id and tokens: the most expensive kind to index) are written in batches of 2,000 with
``TraceStore.write_batch``, once with the conversation index and once with it switched off.

    .venv/bin/python bench/bench_conversations_write.py

Writes ``bench/results/conversations_write.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.events import (  # noqa: E402
    MessagePayload,
    TraceEvent,
    TraceMetadata,
    iso_from_ms,
)
from blueplane.fast_path.consumer import parse_entry  # noqa: E402
from blueplane.store import StoredEvent, TraceStore  # noqa: E402

N, BATCH = 20_000, 2_000


def event(n: int) -> StoredEvent:
    role = "user" if n % 2 == 0 else "assistant"
    p = MessagePayload(
        generation_id=f"r{n // 2}", item_id=f"b{n}", role=role, composer_id=f"c{n // 40}",
        bubble_id=f"b{n}", request_id=None if role == "user" else f"r{n // 2}",
        text="x" * 500, text_length=500, model="m", input_tokens=100, output_tokens=10,
        tokens_reported=role == "assistant",
    )  # fmt: skip
    ev = TraceEvent(
        event_id=f"e{n}", session_id="s", external_session_id="s",
        timestamp=iso_from_ms(1_766_691_308_000 + n), metadata=TraceMetadata(workspace_hash="w"),
        payload=p.to_json_dict(),
    )  # fmt: skip
    return parse_entry(f"{n}-0", ev.to_fields())


def run(events: list[StoredEvent], indexed: bool) -> float:
    store = TraceStore(Path(tempfile.mkdtemp()) / "t.db")
    if not indexed:
        store._indexer.apply = lambda evs: 0  # type: ignore[method-assign]
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        store.write_batch(events[i : i + BATCH], 86400)
    took = time.perf_counter() - started
    store.close()
    return len(events) / took


def main() -> None:
    events = [event(n) for n in range(N)]
    runs = {"plain": [], "indexed": []}
    for _ in range(3):
        for name in runs:
            runs[name].append(round(run(events, name == "indexed")))
    out = {"events_per_s": runs, "load_avg": os.getloadavg(), "events": N, "batch": BATCH}
    (ROOT / "bench" / "results" / "conversations_write.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    for name, values in runs.items():
        print(f"| {name} | {' / '.join(f'{v:,}' for v in values)} events/s |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
