"""Store-only write throughput: ``write_batch`` of 2,000-event batches, SQLite and PostgreSQL.

No Redis, no consumer: the events are parsed once (``parse_entry``, as the consumer does), then
timed while written to a fresh store (a new SQLite file; a new PostgreSQL database on the
machine's server, dropped at the end). Two mixes:

- ``generations``: ``bench_consumer.py``'s entries (~1.3 KB generation traces with a workspace:
  each one also writes its ``trace_sources`` row);
- ``conversations``: turns seen by three sources (database bubbles, hook events, transcript
  lines): every event goes through the conversation indexer.

``--src DIR`` runs another checkout's package (the "before" figure of a change):

    .venv/bin/python bench/bench_store_write.py --runs 3
    .venv/bin/python bench/bench_store_write.py --src /tmp/base/src --output /tmp/before.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("BLUEPLANE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
BATCH = 2000


def generation_entries(n: int) -> list[Any]:
    from blueplane.events import TraceEvent, TraceMetadata
    from blueplane.fast_path.consumer import parse_entry

    words = [
        "the",
        "model",
        "reads",
        "the",
        "file",
        "then",
        "edits",
        "the",
        "function",
        "and",
        "runs",
        "the",
        "tests",
        "again",
    ]

    def text(i: int, k: int) -> str:
        return " ".join(words[(i + j) % len(words)] for j in range(k))

    out = []
    for i in range(n):
        gen = f"gen-{i:08d}"
        ev = TraceEvent(
            event_id=TraceEvent.make_event_id("a1b2c3d4e5f60718", f"generation:{gen}:0"),
            session_id=f"session-{i % 20}", external_session_id=f"session-{i % 20}",
            timestamp=f"2026-01-02T03:{(i // 60) % 60:02d}:{i % 60:02d}.000Z",
            metadata=TraceMetadata(workspace_hash="a1b2c3d4e5f60718"),
            payload={
                "trace_type": "generation", "generation_id": gen, "revision": 0,
                "source_layout": "item_generations", "model": "claude-4-sonnet",
                "unix_ms": 1767323045000 + i, "prompt": text(i, 60), "response": text(i + 7, 90),
                "input_tokens": 1200 + i % 300, "output_tokens": 300 + i % 50,
            },
        )  # fmt: skip
        out.append(parse_entry(f"{1767323045000 + i}-0", ev.to_fields()))
    return out


def conversation_entries(turns: int) -> list[Any]:
    """``turns`` turns over ``turns // 10`` conversations, each from three sources."""
    from blueplane.events import MessagePayload, TraceEvent, TraceMetadata, iso_from_ms
    from blueplane.fast_path.consumer import parse_entry
    from blueplane.hooks.emit import build_fields

    t0 = 1_766_691_308_000
    out = []
    for k in range(turns):
        cid, gen, at = f"conv-{k // 10}", f"gen-{k}", t0 + k * 10_000

        def trace(sid: str, eid: str, payload: Any, at_ms: int, cid: str = cid) -> Any:
            ev = TraceEvent(
                event_id=eid, session_id="s", external_session_id="s",
                timestamp=iso_from_ms(at_ms),
                metadata=TraceMetadata(workspace_hash="a1b2c3d4e5f60718", workspace_path="/p"),
                payload=payload if isinstance(payload, dict) else payload.to_json_dict(),
            )  # fmt: skip
            return parse_entry(sid, ev.to_fields())

        user = MessagePayload(generation_id=f"u{k}", item_id=f"u{k}", role="user",
                              composer_id=cid, bubble_id=f"u{k}", text="fix the bug " * 20,
                              text_length=240)  # fmt: skip
        answer = MessagePayload(
            generation_id=gen, item_id=f"a{k}", role="assistant", composer_id=cid,
            bubble_id=f"a{k}", request_id=gen, text="Fixed " * 100, text_length=600,
            model="gpt-5", input_tokens=999, output_tokens=9, tokens_reported=True,
        )  # fmt: skip
        out += [trace(f"{at}-1", f"db-u{k}", user, at), trace(f"{at}-2", f"db-a{k}", answer, at)]
        base = {"conversation_id": cid, "generation_id": gen, "workspace_roots": ["/p"],
                "model": "gpt-5"}  # fmt: skip
        tokens = {"input_tokens": 1500, "output_tokens": 40}
        for i, h in enumerate(
            [
                {**base, "hook_event_name": "beforeSubmitPrompt", "prompt": "fix the bug"},
                {**base, "hook_event_name": "preToolUse", "tool_name": "Shell",
                 "tool_use_id": f"t{k}"},
                {**base, "hook_event_name": "postToolUse", "tool_name": "Shell",
                 "tool_use_id": f"t{k}", "duration": 120},
                {**base, "hook_event_name": "afterAgentResponse", "text": "Fixed.", **tokens},
                {**base, "hook_event_name": "stop", "status": "completed", **tokens},
            ]
        ):  # fmt: skip
            fields = build_fields(h, {})
            fields["timestamp"] = iso_from_ms(at + i)
            out.append(parse_entry(f"{at}-{10 + i}", fields))
        for i, (role, text) in enumerate((("user", "fix the bug"), ("assistant", "Fixed."))):
            payload = {"trace_type": "transcript_message", "conversation_id": cid,
                       "turn_index": k % 10, "role": role, "text": text, "line": 2 * k + i,
                       "item_id": f"tx{k}:{i}", "generation_id": f"tx{k}:{i}"}  # fmt: skip
            out.append(trace(f"{at}-{20 + i}", f"tx{k}-{i}", payload, at + 5))
    return out


def run(url: str, events: list[Any]) -> dict[str, Any]:
    from blueplane.stores import open_store

    store = open_store(url)
    try:
        started = time.perf_counter()
        inserted = 0
        for i in range(0, len(events), BATCH):
            inserted += store.write_batch(events[i : i + BATCH], 3600).inserted
        wall = time.perf_counter() - started
    finally:
        store.close()
    return {"events": len(events), "inserted": inserted, "wall_s": round(wall, 3),
            "events_per_s": round(len(events) / wall)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--generations", type=int, default=40_000)
    ap.add_argument("--turns", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "store_write.json")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src))
    import psycopg

    mixes = {
        "generations": generation_entries(args.generations),
        "conversations": conversation_entries(args.turns),
    }
    results = []
    for run_no in range(args.runs):
        for mix, events in mixes.items():
            for kind in ("sqlite", "postgres"):
                if kind == "sqlite":
                    folder = Path(tempfile.mkdtemp(prefix="bp-bench-store-"))
                    url = f"sqlite://{folder / 'telemetry.db'}"
                else:
                    name = f"bp_bench_store_{uuid.uuid4().hex[:8]}"
                    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
                        c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
                    url = f"{PG_SERVER}/{name}"
                try:
                    got = run(url, events)
                finally:
                    if kind == "postgres":
                        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as c:
                            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
                got.update(run=run_no, mix=mix, store=kind, load_1m=round(os.getloadavg()[0], 2))
                print(json.dumps(got), flush=True)
                results.append(got)
    summary = {}
    for mix in mixes:
        for kind in ("sqlite", "postgres"):
            rates = sorted(
                r["events_per_s"] for r in results if (r["mix"], r["store"]) == (mix, kind)
            )
            summary[f"{mix}/{kind}"] = {
                "median_events_per_s": rates[len(rates) // 2],
                "runs": rates,
            }
    out = {
        "src": str(args.src), "python": platform.python_version(), "cpus": os.cpu_count(),
        "batch": BATCH, "machine": "shared (2 cores, other engineers' tests running)",
        "summary": summary, "results": results,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
