"""Generated traces for the page's tests and benchmarks: conversations with known totals.

Built as the publisher builds them (message, generation, prompt and composer payloads), and
written through ``TraceStore.write_batch`` like the consumer writes them, so the derived tables
are filled exactly as in production.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from blueplane.events import iso_from_ms
from blueplane.store import StoredEvent, TraceStore

_SEQ = itertools.count()  # stream ids are unique, as Redis makes them
MODELS = ("claude-4.5-sonnet", "gpt-5", "composer-1")
_WORDS = [
    "refactor",
    "the",
    "parser",
    "so",
    "that",
    "each",
    "layout",
    "reads",
    "its",
    "own",
    "keys",
    "and",
    "the",
    "monitor",
    "only",
    "schedules",
    "reads;",
    "add",
    "a",
    "test",
    "that",
    "writes",
    "a",
    "database",
    "while",
    "the",
    "server",
    "runs",
    "and",
    "checks",
    "that",
    "every",
    "generation",
    "arrives",
    "exactly",
    "once",
    "with",
    "its",
    "prompt",
    "and",
    "the",
    "tokens",
    "reported",
]


@dataclass(slots=True)
class Expected:
    """What a generated store holds, for the tests' assertions."""

    traces: int = 0
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    per_model_turns: dict[str, int] = field(default_factory=dict)
    per_workspace_traces: dict[str, int] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)  # id -> title


def _event(
    n: int, trace_type: str, ws: str, session: str, item: str, gen: str, ts_ms: int,
    payload: dict, revision: int = 0,
) -> StoredEvent:  # fmt: skip
    payload = {"trace_type": trace_type, "generation_id": gen, "item_id": item, **payload}
    if revision:
        payload["revision"] = revision
    meta = {"workspace_hash": ws, "source": "python_monitor"}
    return StoredEvent(
        event_id=f"ev-{n}-{item}-{revision}", stream_id=f"{ts_ms}-{next(_SEQ)}",
        event_type="database_trace", hook_type="DatabaseTrace", platform="cursor",
        trace_type=trace_type, session_id=session, workspace_hash=ws, generation_id=gen,
        item_key=item, revision=revision, timestamp=iso_from_ms(ts_ms), timestamp_ms=ts_ms,
        payload=payload, metadata=meta,
        payload_json=json.dumps(payload, ensure_ascii=False),
        metadata_json=json.dumps(meta, ensure_ascii=False), source="python_monitor",
    )  # fmt: skip


def conversation_events(
    n0: int, conv: str, title: str, ws: str, start_ms: int, turns: int, model: str,
    rng: random.Random, expected: Expected, text_words: int = 60,
) -> list[StoredEvent]:  # fmt: skip
    """A composer with ``turns`` user/assistant pairs (tokens on the answers) and the
    generation of each turn."""
    session = f"sess-{ws}"
    evs = [
        _event(n0, "composer", ws, session, conv, conv, start_ms,
               {"record": "full", "composer_id": conv, "name": title, "model_name": model}),
    ]  # fmt: skip
    for k in range(turns):
        t = start_ms + k * 60_000
        gen = f"{conv}-g{k}"
        prompt = f"{title} question {k}: " + " ".join(rng.choices(_WORDS, k=text_words // 3))
        answer = f"Answer {k}: " + " ".join(rng.choices(_WORDS, k=text_words))
        tin, tout = 1000 + rng.randrange(9000), 100 + rng.randrange(900)
        evs.append(_event(n0, "message", ws, session, f"{conv}-u{k}", gen, t, {
            "role": "user", "bubble_id": f"{conv}-u{k}", "composer_id": conv, "request_id": gen,
            "text": prompt, "text_length": len(prompt)}))  # fmt: skip
        evs.append(_event(n0, "message", ws, session, f"{conv}-a{k}", gen, t + 5000, {
            "role": "assistant", "bubble_id": f"{conv}-a{k}", "composer_id": conv,
            "request_id": gen, "text": answer, "text_length": len(answer), "model": model,
            "input_tokens": tin, "output_tokens": tout, "tokens_reported": True}))  # fmt: skip
        evs.append(_event(n0, "generation", ws, session, gen, gen, t, {
            "generation_type": "composer", "description": prompt[:80],
            "generation_timestamp_ms": t}))  # fmt: skip
        expected.turns += 1
        expected.input_tokens += tin
        expected.output_tokens += tout
        expected.per_model_turns[model] = expected.per_model_turns.get(model, 0) + 1
    expected.traces += len(evs)
    expected.per_workspace_traces[ws] = expected.per_workspace_traces.get(ws, 0) + len(evs)
    expected.conversations[conv] = title
    return evs


def generate(
    total_traces: int, *, workspaces: int = 4, turns: int = 8, end_ms: int, span_days: int = 30,
    seed: int = 7, text_words: int = 60,
) -> tuple[Iterator[list[StoredEvent]], Expected]:  # fmt: skip
    """Batches of generated conversations until ``total_traces`` (rounded up to a whole
    conversation); ``Expected`` is complete once the iterator is exhausted."""
    rng = random.Random(seed)
    expected = Expected()
    per_conv = 1 + 3 * turns

    def batches() -> Iterator[list[StoredEvent]]:
        batch: list[StoredEvent] = []
        n = 0
        while expected.traces < total_traces:
            ws = f"{rng.randrange(workspaces):016x}"
            start = end_ms - rng.randrange(span_days * 86_400_000) - turns * 60_000
            batch += conversation_events(
                n, f"conv-{n:07d}", f"Topic {n} {rng.choice(_WORDS)}", ws, start, turns,
                rng.choice(MODELS), rng, expected, text_words,
            )  # fmt: skip
            n += 1
            if len(batch) >= 2000 - per_conv:
                yield batch
                batch = []
        if batch:
            yield batch

    return batches(), expected


def fill(store: TraceStore, batches: Iterator[list[StoredEvent]]) -> None:
    for batch in batches:
        store.write_batch(batch, dedup_window_s=0.0)
