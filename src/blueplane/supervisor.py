"""The loop that keeps a process's components honest: shared by ``run`` and ``consume``.

A component that dies stops the whole process (a half-running server would publish without
storing, or the reverse, and look healthy); the status file is rewritten only when a value in
it changed, so an idle process serialises nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from blueplane.aio import sleep_or_stop, until_tick
from blueplane.health import Health

log = logging.getLogger("blueplane.server")


async def supervise(
    tasks: list[asyncio.Task[None]],
    stop_event: asyncio.Event,
    health: Health,
    write_status: Callable[[], None],
    every_s: float,
) -> None:
    """Until ``stop_event``: stop on the first component failure; write status when changed."""
    written: tuple[int, int] | None = None
    while not stop_event.is_set():
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error("component %s failed: %r; stopping", task.get_name(), exc,
                          exc_info=exc)  # fmt: skip
                health.server["last_error"] = f"{task.get_name()}: {exc!r}"
                stop_event.set()
        now = (health.generation, hash(repr(sorted(health.server.items()))))
        if now != written:
            write_status()
            written = now
        await sleep_or_stop(stop_event, until_tick(every_s))
