"""Small asyncio helpers shared by the long-running components."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


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
