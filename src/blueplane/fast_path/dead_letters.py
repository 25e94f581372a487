"""The dead-letter stream: what the consumer could not store, and how to look at and retry it.

Each dead letter is ``reason``, ``original_id``, ``original_stream``, ``rejected_at`` and
``fields`` (the original entry's fields as a JSON object of text, each value capped;
``truncated=1`` when a value was cut). Replaying re-adds the original fields to the stream and
deletes the dead letter in one MULTI/EXEC (WATCHed), so an entry is never both replayed and kept,
nor replayed twice by two concurrent replays.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

PAGE = 500


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class DeadLetter:
    id: str
    reason: str
    original_id: str | None
    original_stream: str | None
    rejected_at: str | None
    truncated: bool
    fields: dict[str, str] | None
    problem: str | None = None  # why ``fields`` cannot be replayed, if it cannot

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_dead_letter(entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    data = {_text(k): _text(v) for k, v in raw.items()}
    fields: dict[str, str] | None = None
    problem: str | None = None
    try:
        decoded = json.loads(data.get("fields", ""))
    except json.JSONDecodeError as exc:
        problem = f"'fields' is not valid JSON: {exc.msg}"
    else:
        if isinstance(decoded, dict) and all(isinstance(v, str) for v in decoded.values()):
            fields = decoded
        else:
            problem = "'fields' is not a JSON object of text values"
    truncated = data.get("truncated") == "1"
    if truncated and problem is None:
        problem = "the copy of the original was cut (a value over the cap); it cannot be rebuilt"
    return DeadLetter(
        id=_text(entry_id),
        reason=data.get("reason", ""),
        original_id=data.get("original_id"),
        original_stream=data.get("original_stream"),
        rejected_at=data.get("rejected_at"),
        truncated=truncated,
        fields=fields,
        problem=problem,
    )


async def dead_letter_count(redis: aioredis.Redis, stream: str) -> int:
    """How many dead letters wait on ``stream``."""
    return int(await redis.xlen(stream))


async def iter_dead_letters(
    redis: aioredis.Redis, stream: str, limit: int | None = None
) -> AsyncIterator[DeadLetter]:
    """Dead letters oldest first, page by page."""
    start, seen = "-", 0
    while limit is None or seen < limit:
        count = PAGE if limit is None else min(PAGE, limit - seen)
        page = await redis.xrange(stream, min=start, max="+", count=count)
        if not page:
            return
        for entry_id, raw in page:
            yield parse_dead_letter(entry_id, raw)
        seen += len(page)
        start = "(" + _text(page[-1][0])


@dataclass
class ReplayResult:
    replayed: dict[str, str] = field(default_factory=dict)  # dead-letter id -> new stream id
    missing: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # dead-letter id -> why


async def replay_one(
    redis: aioredis.Redis, dead_stream: str, target: str, entry_id: str, result: ReplayResult
) -> None:
    """Re-add one dead letter's original fields to ``target`` and delete it, atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(dead_stream)
                found = await pipe.xrange(dead_stream, min=entry_id, max=entry_id)
                if not found:
                    await pipe.unwatch()
                    result.missing.append(entry_id)
                    return
                letter = parse_dead_letter(found[0][0], found[0][1])
                if letter.fields is None or letter.problem:
                    await pipe.unwatch()
                    result.refused[entry_id] = letter.problem or "no fields"
                    return
                pipe.multi()
                pipe.xadd(target, letter.fields)
                pipe.xdel(dead_stream, entry_id)
                new_id, _ = await pipe.execute()
                result.replayed[entry_id] = _text(new_id)
                return
            except WatchError:
                continue  # a dead letter was added or removed meanwhile: read again


async def replay(
    redis: aioredis.Redis, dead_stream: str, target: str, ids: list[str] | None
) -> ReplayResult:
    """Replay ``ids``, or every dead letter when ``ids`` is None."""
    result = ReplayResult()
    if ids is None:
        ids = [d.id async for d in iter_dead_letters(redis, dead_stream)]
    for entry_id in ids:
        await replay_one(redis, dead_stream, target, entry_id, result)
    return result
