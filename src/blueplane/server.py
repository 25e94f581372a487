"""The server: wires the components together, runs them, and stops them cleanly.

It holds no logic of its own beyond start-up order, signals and the status file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from redis.asyncio import Redis

from blueplane import __version__
from blueplane.broker import (
    BundledRedis,
    RedisFacts,
    make_client,
    redis_facts,
    resolve_server_url,
    wait_for_redis,
)
from blueplane.config import Settings
from blueplane.config_reloader import ConfigReloader
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.cursor.paths import resolve_user_dirs
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.cursor.transcripts import TranscriptFollower
from blueplane.cursor.workspace_mapper import WorkspaceMapper
from blueplane.events import iso_now
from blueplane.fast_path.consumer import FastPathConsumer
from blueplane.fast_path.trimmer import StreamTrimmer
from blueplane.health import Health
from blueplane.hooks.spool import SpoolReplayer
from blueplane.instance_lock import InstanceLock, pid_alive
from blueplane.machine import machine_id, user_name
from blueplane.otlp import OtlpExporter
from blueplane.priority import current as priority_now
from blueplane.priority import lower_current_thread
from blueplane.publisher import Publisher
from blueplane.rollout import Rollout, describe
from blueplane.store import TraceStore
from blueplane.stores import open_store_showing
from blueplane.supervisor import supervise
from blueplane.urls import mask_url

log = logging.getLogger("blueplane.server")

STATUS_EVERY_S = 2.0
STOP_GRACE_S = 4.0
# The store's writer thread releases the GIL for each SQLite step and must get it back to bind
# the next row; with the default 5 ms switch interval the busy event loop (parsing the next
# batch) keeps it that long each time, and the store writes ~25 % slower (bench_consumer.py).
GIL_SWITCH_INTERVAL_S = 0.001
# The fast path allocates ~15 containers per event (20 k events/s): with CPython's default
# thresholds (700, 10, 10) the collector ran ~40 times per 2,000-event batch and every
# full collection traversed each object of the program (py-spy: 15 % of the event loop in
# ``gc_collect_main``, bench_consumer.py). The objects made at start-up (modules, config,
# models) are frozen out of the collections; young ones are collected every 10,000
# allocations. Reference counting frees nearly everything anyway; only cycles wait longer.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Freeze what start-up made and collect less often (see ``GC_THRESHOLDS``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = Health()
        self.stop_event = asyncio.Event()
        self.bundled: BundledRedis | None = None
        self.lock: InstanceLock | None = None
        self.rollout = Rollout(settings.feature_flags)
        self.reloader: ConfigReloader | None = None

    def request_reload(self) -> None:
        """SIGHUP: reread the config (only the feature flags apply without a restart)."""
        if self.reloader is not None:
            self.reloader.request()

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            log.info("%s: stopping", reason)
            self.stop_event.set()

    async def run(self) -> None:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        url, self.bundled = await resolve_server_url(s)
        redis = make_client(url, s.redis)
        self.health.server.update(
            pid=os.getpid(), version=__version__, started_at=iso_now(), redis_url=mask_url(url),
            bundled_redis=self.bundled is not None, home=str(s.home),
            config_file=str(s.config_file) if s.config_file else None, state="starting",
        )  # fmt: skip
        self._write_status()
        store: TraceStore | None = None
        tasks: list[asyncio.Task[None]] = []
        mapper: WorkspaceMapper | None = None
        try:
            if not await self._wait_for_redis(redis, url):
                return
            self._note_redis(await redis_facts(redis))  # RedisTooOld: exit 1
            keys = s.keys()  # this install's producer-private key names (redis.key_namespace)
            if keys.namespace:
                log.info("producer keys under %s (redis.key_namespace)", keys.prefix)
            self.lock = InstanceLock(redis, s.home, keys=keys)
            await self.lock.acquire()  # InstanceLocked: exit 1, naming the holder
            tasks.append(
                asyncio.create_task(
                    self.lock.run(self.stop_event, self.request_stop), name="instance_lock"
                )
            )
            user_dirs = resolve_user_dirs(s.cursor_dirs)
            self.health.server["cursor_user_dirs"] = [str(d) for d in user_dirs]
            if not user_dirs:
                log.warning("no Cursor User folder found; set BLUEPLANE_CURSOR_DIRS")
            mon = s.cursor_database_monitor
            if mon.sync_window_hours > mon.dedup_window_hours:
                log.warning(
                    "sync_window_hours (%g) > dedup_window_hours (%g): a database replaced while "
                    "the server was stopped may be re-sent in part; keep sync ≤ dedup",
                    mon.sync_window_hours, mon.dedup_window_hours,
                )  # fmt: skip
            sessions = SessionMonitor(
                redis, s.redis.stream, s.session_dir, self.health,
                file_poll_s=s.session_monitor.session_file_poll_seconds,
                idle_expiry_hours=s.session_monitor.session_idle_expiry_hours,
                read_stream=s.session_monitor.read_stream, keys=keys,
            )  # fmt: skip
            mapper = WorkspaceMapper(user_dirs, s.workspace_cache_path, mon.query_timeout_seconds)
            publisher = Publisher(
                redis, s.redis.stream, mon.dedup_window_hours * 3600,
                machine_id=machine_id(s.home), user=user_name(hashed=s.identity.hash_user_name),
                keys=keys,
            )  # fmt: skip
            await sessions.load()
            tasks.append(asyncio.create_task(sessions.run(self.stop_event), name="sessions"))
            reloader = ConfigReloader(
                s, self.rollout, self.health,
                known_workspaces=_known_workspaces(mapper),
                active_workspaces=_active_workspaces(sessions),
            )  # fmt: skip
            self.reloader = reloader
            log.info("%s", describe(s.feature_flags))
            await reloader.warn_unknown_entries()
            tasks.append(asyncio.create_task(reloader.run(self.stop_event), name="config"))
            if mon.enabled:
                monitor = CursorDatabaseMonitor(
                    mon, sessions, mapper, publisher, self.health, rollout=self.rollout
                )
                tasks.append(asyncio.create_task(monitor.run(self.stop_event), name="monitor"))
            if s.fast_path.enabled:
                # only a store that is written needs opening (a producer with the fast path
                # off publishes to a team's Redis and has no store)
                store = await self._open_store()
                if store is None:
                    return
                consumer = FastPathConsumer(
                    redis, s.fast_path, s.redis.stream, store,
                    mon.dedup_window_hours * 3600, self.health,
                    catch_up=publisher.catching_up,
                )  # fmt: skip
                tasks.append(asyncio.create_task(consumer.run(self.stop_event), name="consumer"))
            if s.otlp.active():
                otlp = OtlpExporter(redis, s.otlp, s.redis.stream, s.otlp_state_path, self.health)
                tasks.append(asyncio.create_task(otlp.run(self.stop_event), name="otlp"))
            if s.hooks.transcripts:
                follower = TranscriptFollower(
                    sessions, publisher, s.transcripts_dir, self.health,
                    capture_content=s.hooks_capture_content, redact=s.hooks.redact_secrets,
                )  # fmt: skip
                tasks.append(asyncio.create_task(follower.run(self.stop_event), name="transcripts"))
            spool = SpoolReplayer(
                redis, s.redis.stream, s.spool_dir, self.health, s.hooks.spool_replay_seconds,
                keys=keys,
            )  # fmt: skip
            tasks.append(asyncio.create_task(spool.run(self.stop_event), name="hook_spool"))
            if keys.namespace and not s.fast_path.enabled:
                # One producer of many on a team's Redis: it knows only its own stream
                # position, so it does not trim for the others (the central consume trims).
                log.info("stream trimmer off: namespaced producer without the fast path")
            else:
                trimmer = StreamTrimmer(
                    redis, s.redis.stream, s.fast_path.max_stream_length, self.health,
                    s.fast_path.trim_interval_seconds, position_key=keys.position,
                )  # fmt: skip
                tasks.append(asyncio.create_task(trimmer.run(self.stop_event), name="trimmer"))
            self.health.server["state"] = "running"
            detection = (
                f"file events, safety poll every {mon.poll_interval_seconds:g} s"
                if mon.watch_files
                else f"polling every {mon.poll_interval_seconds:g} s"
            )
            log.info(
                "Blueplane Monitor %s running: Redis %s, store %s, %s",
                __version__, mask_url(url), store.label if store else "none (fast path off)",
                detection,
            )  # fmt: skip
            await self._supervise(tasks)
        finally:
            await self._shutdown(tasks)
            if mapper is not None:
                mapper.flush()
            if store is not None:
                store.close()
            if self.lock is not None:
                await self.lock.release()
            await redis.aclose()
            if self.bundled is not None:
                await asyncio.to_thread(self.bundled.stop)
                log.info("bundled Redis server stopped")
            self.health.server["state"] = "stopped"
            self.health.server["stopped_at"] = iso_now()
            self._write_status()

    async def _open_store(self) -> TraceStore | None:
        """The store of ``store.url``, waiting (shown in ``status``) while it does not answer."""
        return await open_store_showing(
            self.settings.store_url, self.stop_event, self.health, self._write_status,
            STATUS_EVERY_S,
        )  # fmt: skip

    def _note_redis(self, facts: RedisFacts) -> None:
        """Record the Redis version and eviction policy; warn once if keys can be evicted."""
        self.health.server.update(
            redis_version=facts.version, redis_maxmemory_policy=facts.maxmemory_policy
        )
        warning = facts.eviction_warning
        if warning is not None:
            log.warning("%s", warning)
            self.health.server.setdefault("warnings", []).append(warning)

    async def _wait_for_redis(self, redis: Redis, url: str) -> bool:
        """Wait for Redis at start, showing the outage in ``status`` while it lasts."""
        comp = self.health.component("redis")
        waiter = asyncio.create_task(
            wait_for_redis(
                redis, url, self.stop_event, self.settings.redis.reconnect_backoff_seconds
            )
        )
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=STATUS_EVERY_S)
            if not waiter.done():
                comp.fail("unavailable", f"Redis at {mask_url(url)} does not answer; retrying")
                self._write_status()
        ok = waiter.result()
        if ok:
            comp.status, comp.last_error = "ok", None
        return ok

    async def _supervise(self, tasks: list[asyncio.Task[None]]) -> None:
        await supervise(tasks, self.stop_event, self.health, self._write_status, STATUS_EVERY_S)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stop_event.set()
        if not tasks:
            return
        started = time.monotonic()
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("stopped in %.2f s", time.monotonic() - started)

    def _write_status(self) -> None:
        if (self.lock is None or not self.lock.held) and self._status_is_another_servers():
            return  # not ours until we hold the instance lock: never overwrite a live server's
        try:
            self.health.write(self.settings.status_path)
        except OSError as exc:
            log.error("cannot write %s: %s", self.settings.status_path, exc)

    def _status_is_another_servers(self) -> bool:
        try:
            server = json.loads(self.settings.status_path.read_text(encoding="utf-8"))["server"]
            pid, state = server.get("pid"), server.get("state")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return (
            isinstance(pid, int) and pid != os.getpid()
            and state in ("starting", "running") and pid_alive(pid)
        )  # fmt: skip


def _known_workspaces(mapper: WorkspaceMapper) -> Callable[[], list[tuple[str, str | None]]]:
    """Workspaces Cursor has opened on this machine: what include/exclude can name."""
    return lambda: [(f.workspace_hash, f.local_path) for f in mapper.discover() if f.workspace_hash]


def _active_workspaces(sessions: SessionMonitor) -> Callable[[], list[tuple[str, str | None]]]:
    """Workspaces with a session (read on the event loop, where the sessions live)."""
    return lambda: [
        (h, active[-1].workspace_path or None) for h, active in sessions.active_workspaces().items()
    ]


def install_signal_handlers(server: Server) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop, signal.Signals(sig).name)
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)


async def serve(settings: Settings) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tune_gc()
    # First, before any thread or the bundled redis-server starts: they inherit it.
    prio = lower_current_thread() if settings.background_priority else priority_now()
    server = Server(settings)
    server.health.server["priority"] = prio.as_dict()
    install_signal_handlers(server)
    await server.run()
