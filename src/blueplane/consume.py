"""``blueplane consume``: only the fast-path consumer (and the stream trimmer), for a central host.

Several ``consume`` processes, on one host or several, with distinct ``fast_path.consumer``
names, form one consumer group on the shared stream: Redis hands each entry to one of them, and
entries a dead consumer left pending are claimed by the others (``XAUTOCLAIM`` after
``claim_idle_ms``). They write to the store of ``store.url`` (usually PostgreSQL). No Cursor
folder is read and no instance lock is taken: several per host is the point.

Health goes to ``BLUEPLANE_HOME/consume-<consumer>.json`` (one file per consumer name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

from blueplane import __version__
from blueplane.broker import make_client, redis_facts, resolve_client_url, wait_for_redis
from blueplane.config import FastPathConfig, Settings
from blueplane.events import iso_now
from blueplane.fast_path.consumer import FastPathConsumer
from blueplane.fast_path.trimmer import StreamTrimmer
from blueplane.health import Health
from blueplane.server import GIL_SWITCH_INTERVAL_S, STATUS_EVERY_S, STOP_GRACE_S, tune_gc
from blueplane.store import TraceStore
from blueplane.stores import open_store_showing
from blueplane.supervisor import supervise
from blueplane.urls import mask_url

log = logging.getLogger("blueplane.consume")


# ``consume`` writes to a central store that several consumers share: a larger batch than the
# fast path's default (2,000) spreads each write's fixed part over more events (on PostgreSQL the
# write lock's hand-over and the commit's WAL flush, held under that lock): 3 writers stored
# 13.3 k events/s with 2,000-event batches, 16.1 k with 5,000 (bench/bench_pg_writers.py).
CONSUME_BATCH_SIZE = 5000


def consume_fast_path(settings: Settings) -> FastPathConfig:
    """The fast path's settings for ``consume``: ``batch_size`` is ``CONSUME_BATCH_SIZE`` unless
    the configuration (file or ``BLUEPLANE_FAST_PATH__BATCH_SIZE``) sets one."""
    fp = settings.fast_path
    if "batch_size" in fp.model_fields_set:
        return fp
    return fp.model_copy(update={"batch_size": CONSUME_BATCH_SIZE})


def consume_status_path(settings: Settings, consumer: str | None = None) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", consumer or settings.fast_path.consumer)
    return settings.home / f"consume-{name}.json"


class ConsumeServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = Health()
        self.stop_event = asyncio.Event()

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            log.info("%s: stopping", reason)
            self.stop_event.set()

    def _write_status(self) -> None:
        path = consume_status_path(self.settings)
        try:
            self.health.write(path)
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)

    async def run(self) -> None:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        url = await resolve_client_url(s)
        redis = make_client(url, s.redis)
        self.health.server.update(
            pid=os.getpid(), version=__version__, started_at=iso_now(), redis_url=mask_url(url),
            role="consume", consumer=s.fast_path.consumer, group=s.fast_path.group,
            store=mask_url(s.store_url), state="starting",
        )  # fmt: skip
        self._write_status()
        store: TraceStore | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await wait_for_redis(
                redis, url, self.stop_event, s.redis.reconnect_backoff_seconds
            ):
                return
            await redis_facts(redis)  # RedisTooOld: exit 1
            store = await open_store_showing(
                s.store_url, self.stop_event, self.health, self._write_status, STATUS_EVERY_S
            )
            if store is None:
                return
            consumer = FastPathConsumer(
                redis, consume_fast_path(s), s.redis.stream, store,
                s.cursor_database_monitor.dedup_window_hours * 3600, self.health,
            )  # fmt: skip
            trimmer = StreamTrimmer(
                redis, s.redis.stream, s.fast_path.max_stream_length, self.health,
                s.fast_path.trim_interval_seconds, position_required=False,
            )  # fmt: skip
            tasks = [
                asyncio.create_task(consumer.run(self.stop_event), name="consumer"),
                asyncio.create_task(trimmer.run(self.stop_event), name="trimmer"),
            ]
            self.health.server["state"] = "running"
            log.info(
                "Blueplane consume %s running: consumer %s of group %s on %s at Redis %s, "
                "store %s",
                __version__, s.fast_path.consumer, s.fast_path.group, s.redis.stream,
                mask_url(url), store.label,
            )  # fmt: skip
            await self._supervise(tasks)
        finally:
            self.stop_event.set()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
                for task in pending:
                    task.cancel()
                for task in pending:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if store is not None:
                store.close()
            await redis.aclose()
            self.health.server["state"] = "stopped"
            self.health.server["stopped_at"] = iso_now()
            self._write_status()

    async def _supervise(self, tasks: list[asyncio.Task[None]]) -> None:
        await supervise(tasks, self.stop_event, self.health, self._write_status, STATUS_EVERY_S)


async def consume(settings: Settings) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tune_gc()
    server = ConsumeServer(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop, signal.Signals(sig).name)
    await server.run()
