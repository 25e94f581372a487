"""Small asyncio helpers shared by the long-running components."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def until_tick(interval: float) -> float:
    """Seconds from now to the next multiple of ``interval`` on the monotonic clock.

    Periodic loops that sleep this long instead of ``interval`` after their work wake on shared
    ticks: the status check, the spool, the transcript poll, the lock refresh and the trimmer
    (2, 2, 2, 5 and 10 s) then cost one wake-up of the process per 2 s together, not one each.
    The period stays at most ``interval``.
    """
    if interval <= 0:
        return 0.0
    now = time.monotonic()
    return (math.floor(now / interval) + 1) * interval - now


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def or_stop(aw: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``aw``'s result, or None as soon as ``stop`` is set (``aw`` is then cancelled).

    For blocking reads (``XREAD BLOCK``): a long block costs few idle round-trips and never
    delays a stop. redis-py closes a connection whose reply was cancelled, never reuses it.
    """
    task = asyncio.ensure_future(aw)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def wait_any(events: list[asyncio.Event], seconds: float | None) -> None:
    """Return when any of ``events`` is set or after ``seconds`` (None: no time limit)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    timeout = None if seconds is None else max(0.0, seconds)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@dataclass
class Backoff:
    """The delays of one retry loop: ``initial``, then each times ``factor`` up to ``cap``.

    ``next()`` returns the delay to wait now and advances; ``reset()`` starts again after a
    success. ``jitter``, when given, returns a multiplier applied to each delay (the sequence
    itself is not jittered, so one unlucky draw does not carry over to the next delay).
    """

    initial: float
    cap: float = math.inf
    factor: float = 2.0
    jitter: Callable[[], float] | None = None
    attempts: int = field(default=0, init=False)
    _current: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._current = self.initial

    def next(self) -> float:
        """The delay for this attempt; the following one grows (capped)."""
        delay = self._current
        self._current = min(self._current * self.factor, self.cap)
        self.attempts += 1
        return delay * self.jitter() if self.jitter is not None else delay

    def reset(self) -> None:
        """Back to ``initial``: the failure is over."""
        self._current = self.initial
        self.attempts = 0
