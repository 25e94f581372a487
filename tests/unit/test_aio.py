"""The shared retry delays and the stoppable sleep the long-running loops are built on."""

from __future__ import annotations

import asyncio
import time

import pytest

from blueplane.aio import Backoff, or_stop, sleep_or_stop, until_tick


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    b = Backoff(0.5, cap=10.0)
    assert [b.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.attempts == 7


def test_backoff_reset_starts_again_from_initial() -> None:
    b = Backoff(1.0, cap=30.0)
    for _ in range(4):
        b.next()
    b.reset()
    assert b.attempts == 0
    assert [b.next(), b.next()] == [1.0, 2.0]


def test_backoff_first_delay_is_the_configured_one_even_above_the_cap() -> None:
    # The loops it replaced waited the configured delay first and capped only the doubling.
    b = Backoff(40.0, cap=30.0)
    assert [b.next(), b.next(), b.next()] == [40.0, 30.0, 30.0]


def test_backoff_without_cap_keeps_doubling() -> None:
    b = Backoff(2.0)
    assert [b.next() for _ in range(4)] == [2.0, 4.0, 8.0, 16.0]


def test_jitter_scales_each_delay_and_does_not_compound() -> None:
    draws = iter([0.5, 1.4, 0.8, 1.0])
    b = Backoff(0.5, jitter=lambda: next(draws))
    delays = [b.next() for _ in range(4)]
    assert delays == pytest.approx([0.25, 1.4, 1.6, 4.0])


def test_sleep_or_stop_returns_true_as_soon_as_stop_is_set() -> None:
    async def scenario() -> tuple[bool, float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        start = time.monotonic()
        stopped = await sleep_or_stop(stop, 60.0)
        return stopped, time.monotonic() - start

    stopped, elapsed = asyncio.run(scenario())
    assert stopped is True
    assert elapsed < 10.0  # woke on the event, not after the 60 s


def test_sleep_or_stop_returns_false_after_the_delay() -> None:
    async def scenario() -> bool:
        return await sleep_or_stop(asyncio.Event(), 0.01)

    assert asyncio.run(scenario()) is False


def test_until_tick_lands_every_caller_on_the_same_tick() -> None:
    """Loops of 2, 5 and 10 s that sleep ``until_tick`` wake together on shared ticks (the 10 s
    ones), and none waits longer than its interval."""
    for interval in (0.5, 2.0, 5.0, 10.0):
        ticks = []
        for _ in range(3):
            wait = until_tick(interval)
            now = time.monotonic()
            assert 0 < wait <= interval
            ticks.append(now + wait)
            time.sleep(0.001)
        for tick in ticks:  # on the grid of the interval, whoever asked and when
            assert abs(tick / interval - round(tick / interval)) < 1e-3
    assert until_tick(0) == 0.0


async def test_or_stop_returns_the_result_or_gives_up_on_stop() -> None:
    stop = asyncio.Event()
    assert await or_stop(asyncio.sleep(0, result=7), stop) == 7
    never = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(or_stop(never, stop), 2) is None
    assert never.cancelled()
