"""Small asyncio helpers shared by the long-running components."""

from __future__ import annotations

import asyncio


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
