"""CursorDatabaseMonitor: reads the databases of active workspaces when they change, and publishes.

Change detection is event-driven: the ``ChangeWatcher`` reports writes to a database's files
and that database is read at once (a burst of writes costs one read; a write during a read
costs one more read after it). A timed poll every ``poll_interval_seconds`` is only the safety
net for missed events; a folder that cannot be watched is polled every
``fallback_poll_seconds`` instead. While nothing changes, nothing is opened, read or sent.

Each workspace, and the global databases together, is one *target* with its own task, so a
database retrying a lock (seconds of backoff) never delays another one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from blueplane.aio import Backoff, sleep_or_stop, wait_any
from blueplane.broker import REDIS_DOWN
from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor import inotify_poll
from blueplane.cursor.change_watcher import ChangeWatcher
from blueplane.cursor.db_poller import DatabasePoller, DatabaseState
from blueplane.cursor.global_db import GLOBAL_HEALTH_PREFIX, GlobalDatabases, GlobalMapper
from blueplane.cursor.schema_detector import SchemaDetector
from blueplane.cursor.session_monitor import ActiveSession, SessionMonitor
from blueplane.cursor.sqlite_ro import CursorDbError, fingerprint
from blueplane.events import iso_now
from blueplane.health import Health
from blueplane.publisher import Destination, Publisher
from blueplane.rollout import Rollout

log = logging.getLogger("blueplane.database_monitor")

# While Redis is away the monitor retries after 0.5 s, doubling up to 10 s (Cursor is not read
# meanwhile: nothing could be published, and the watermarks say where to resume).
REDIS_RETRY_MIN_S = 0.5
REDIS_RETRY_MAX_S = 10.0
GLOBAL = "global"  # the target that reads every global database
IDLE_OK = frozenset({"ok", "idle"})
# While a database's -wal holds a commit not yet visible (and was written in the last
# WAL_SETTLE_WINDOW_S), its fingerprint is checked again this often: a commit a read missed
# because its sync had not ended is read once it is visible.
WAL_RECHECK_S = 0.05


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of ``interval`` after ``now`` (at most ``interval`` away).

    Every target's timed poll falls on the same ticks, so the safety poll of 100 workspaces
    and the global databases is one round (one wake-up, one ``status.json`` write) per
    interval, not a round per target at the time its last read happened to end.
    """
    return (math.floor(now / interval) + 1) * interval


class MapperLike(GlobalMapper, Protocol):
    async def find_database(self, workspace_hash: str, workspace_path: str | None) -> Any: ...
    def invalidate(self, workspace_hash: str) -> None: ...


@dataclass
class _Target:
    """One thing read on its own schedule: a workspace's database, or the global databases."""

    dirty: bool = True  # a change was seen (or never read): read as soon as possible
    due: float = 0.0  # monotonic time of the next timed poll
    task: asyncio.Task[None] | None = None
    folders: tuple[Path, ...] = ()  # where its database files live (what is watched)


class CursorDatabaseMonitor:
    def __init__(
        self,
        config: CursorDatabaseMonitorConfig,
        sessions: SessionMonitor,
        mapper: MapperLike,
        publisher: Publisher,
        health: Health,
        detector: SchemaDetector | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        watcher: ChangeWatcher | None = None,
        rollout: Rollout | None = None,
    ) -> None:
        self.cfg = config
        # The migration's flag: out-of-rollout workspaces are mapped but never read/published.
        self.rollout = rollout if rollout is not None else Rollout()
        self._rollout_epoch = self.rollout.epoch
        self._rollout_on: dict[str, bool] = {}
        self._off_fingerprints: dict[str, Any] = {}  # files of out-of-rollout workspaces
        self.sessions = sessions
        self.mapper = mapper
        self.health = health
        self.poller = DatabasePoller(
            config, publisher, detector, clock=clock, sleep=sleep, jitter=jitter
        )
        self.global_dbs = GlobalDatabases(
            config, sessions, mapper, self.poller, health, self.rollout
        )
        if watcher is None and config.watch_files:
            # Where it exists, the timer-read inotify watch: Cursor's writes wake no thread of
            # ours (see inotify_poll); elsewhere watchfiles.
            polled = config.watch_quietly and inotify_poll.available()
            watcher = ChangeWatcher(
                config.watch_debounce_ms, **({"watch": inotify_poll.poll_watch} if polled else {})
            )
        self.watcher = watcher
        self._states: dict[str, DatabaseState] = {}
        self._component = health.component("database_monitor")
        self._targets: dict[str, _Target] = {}
        self._by_folder: dict[Path, set[str]] = {}
        self._wake = asyncio.Event()  # a target's read finished: reschedule
        self._sem = asyncio.Semaphore(config.max_concurrent_workspaces)
        self._active_seen: frozenset[tuple[str, str]] = frozenset()
        # Whether the watched folders or their modes may have changed since the last sync.
        self._watch_synced: tuple[int, int] | None = None
        self._mapping_epoch = 0
        self._active: dict[str, list[ActiveSession]] | None = None
        self._finished: list[str] = []  # targets whose read finished, not yet collected
        self._reason_due: dict[str, float] = {}
        # Redis's run_id: a new one means a restarted server, which may have lost its last
        # writes (appendfsync everysec and a machine crash). Checked every safety poll.
        self._redis_run_id: str | None = None
        self._next_identity_check = 0.0
        self.polls = 0  # scheduling rounds run (tests wait on it)
        self.checks = 0  # timed polls answered by a fingerprint check in the scheduler
        self._round_stamp: str | None = None  # ``last_check`` of this round's idle checks

    @property
    def detector(self) -> SchemaDetector:
        return self.poller.detector

    @detector.setter
    def detector(self, detector: SchemaDetector) -> None:
        self.poller.detector = detector

    # ----------------------------------------------------------------- counters
    @property
    def reads(self) -> int:
        """Databases actually opened and read (an unchanged fingerprint does not count)."""
        return self.poller.reads

    # ----------------------------------------------------------------- loop
    async def run(self, stop: asyncio.Event) -> None:
        self._component.status = "ok"
        watch_task = (
            asyncio.create_task(self.watcher.run(stop), name="change-watcher")
            if self.watcher is not None
            else None
        )
        try:
            await self._loop(stop)
        finally:
            if watch_task is not None:
                watch_task.cancel()
                await asyncio.gather(watch_task, return_exceptions=True)
            await self._finish_inflight()

    async def _loop(self, stop: asyncio.Event) -> None:
        down_since: float | None = None
        redis_delay = Backoff(REDIS_RETRY_MIN_S, REDIS_RETRY_MAX_S)
        while not stop.is_set():
            sessions_changed = self.sessions.changed.is_set()
            self.sessions.changed.clear()
            self.rollout.changed.clear()
            self._wake.clear()
            try:
                if down_since is not None:
                    await self.poller.publisher.redis.ping()  # a read alone may not touch Redis
                    self._next_identity_check = 0.0
                if time.monotonic() >= self._next_identity_check:
                    await self._check_redis_identity()
                healthy = self._schedule(refresh_active=sessions_changed)
            except REDIS_DOWN as exc:
                # Back off (doubling, capped) and log once per outage, not once per round.
                self._component.fail("redis_unavailable", f"Redis unavailable: {exc}")
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("database monitor: Redis unavailable (%s); will catch up", exc)
                for target in self._targets.values():
                    target.dirty = True  # read everything again once Redis answers
                await sleep_or_stop(stop, redis_delay.next())
                continue
            if down_since is None or healthy:
                self._component.status = "ok"
            if down_since is not None and healthy:
                log.info(
                    "database monitor: Redis answers again after %.1f s; caught up",
                    time.monotonic() - down_since,
                )
                down_since = None
                redis_delay.reset()
            waits = [stop, self.sessions.changed, self._wake, self.rollout.changed]
            if self.watcher is not None:
                waits.append(self.watcher.wake)
            await wait_any(waits, self._next_due() - time.monotonic())

    async def _check_redis_identity(self) -> None:
        """Start again from what Redis holds when it is a restarted server.

        Watermarks are cached in memory; a Redis that came back without its last writes has
        older watermarks and no dedup keys for what it lost. Reloading them makes the lost
        items new again, so they are published again (the store ignores any it already has).
        """
        self._next_identity_check = time.monotonic() + self.cfg.poll_interval_seconds
        info = await self.poller.publisher.redis.info("server")
        run_id = str(info.get("run_id") or "")
        if self._redis_run_id is not None and run_id != self._redis_run_id:
            log.warning(
                "Redis restarted (run_id %s… → %s…): reloading every watermark from it, so that "
                "whatever it lost is read and sent again", self._redis_run_id[:8], run_id[:8],
            )  # fmt: skip
            self._component.count("redis_restarts_seen")
            for state in [*self._states.values(), *self.global_dbs.states()]:
                state.watermarks, state.fingerprint, state.inode = None, None, None
            for target in self._targets.values():
                target.dirty = True
        self._redis_run_id = run_id

    def _schedule(self, refresh_active: bool = True) -> bool:
        """Collect finished reads, then start a read of each target that changed or is due.

        True when a read succeeded since the last call, or nothing is active (so an outage is
        known to be over). The active set is recomputed only when the sessions changed: a round
        runs after every finished read, and must cost little with 100 workspaces.
        """
        now = time.monotonic()
        if refresh_active or self._active is None:
            self._active = self.sessions.active_workspaces()
            self._drop_inactive(self._active)
            self._new_active(self._active)
        active = self._active
        if self.rollout.epoch != self._rollout_epoch:
            self._apply_rollout(active)
        succeeded = self._collect(now)
        if self.watcher is not None:
            for folder in self.watcher.take():
                for key in self._by_folder.get(folder, ()):
                    if key in self._targets:
                        self._targets[key].dirty = True
        self._round_stamp = None
        for key, target in self._targets.items():
            idle_due = target.task is None and not target.dirty and now >= target.due
            if idle_due and self._unchanged(key):
                target.due = self._due(key, target, now)
                continue
            if target.task is None and (target.dirty or now >= target.due):
                target.dirty = False
                target.task = asyncio.create_task(self._read_target(key, active))
                target.task.add_done_callback(functools.partial(self._on_done, key))
        epochs = (self._mapping_epoch, self.watcher.epoch if self.watcher is not None else 0)
        if epochs != self._watch_synced:
            self._sync_watch()
            self._watch_synced = epochs
        self.polls += 1
        c = self._component
        c.set_counter("reads", self.poller.reads)
        c.set_counter("wal_late_commits", self.poller.late_commits)
        if self.watcher is not None:
            c.set_counter("change_batches", self.watcher.batches)
            info = self.watcher.describe()
            c.set_counter("watched_folders", info["watched_folders"])
            c.set_counter("polled_folders", info["polled_folders"])
        return succeeded or not active

    def _apply_rollout(self, active: dict[str, list[ActiveSession]]) -> None:
        """New flags: re-decide every active workspace now (not at its next read). One that
        turned on is read at once from its watermarks, so what was written while it was off
        is published then; the global databases re-read its conversations (session replay)."""
        self._rollout_epoch = self.rollout.epoch
        turned_on = False
        for h, sessions in active.items():
            decision = self.rollout.decide(h, sessions[-1].workspace_path or None)
            wh = self.health.workspace(h)
            wh.rollout = decision.to_json()
            was = self._rollout_on.get(h)
            self._rollout_on[h] = decision.enabled
            if decision.enabled and was is False:
                turned_on = True
                log.info("workspace %s: publication on (%s)", h, decision.reason)
                state = self._states.get(h)
                if state is not None:
                    state.fingerprint = None  # read it whole from the watermarks
            elif not decision.enabled and was is not False:
                log.info("workspace %s: publication off (%s)", h, decision.reason)
                wh.status = "rollout_off"
            target = self._targets.get(h)
            if target is not None:
                target.dirty = True
        glob = self._targets.get(GLOBAL)
        if glob is not None and turned_on:
            glob.dirty = True

    def _unchanged(self, key: str) -> bool:
        """A timed poll of a healthy workspace whose files did not change: two ``stat`` calls
        here instead of a task, a thread hop and a round (the safety poll of 100 workspaces)."""
        state = self._states.get(key)
        wh = self.health.workspaces.get(key)
        if state is None or state.fingerprint is None or wh is None or wh.status not in IDLE_OK:
            return False
        try:
            same = fingerprint(state.path) == state.fingerprint
        except CursorDbError:
            return False  # vanished: the read reports it
        self.checks += 1
        if same:
            if self._round_stamp is None:  # one clock read for the round's 100 checks
                self._round_stamp = iso_now()
            wh.last_check = self._round_stamp
            wh.status = "idle"
        return same

    def _new_active(self, active: dict[str, list[ActiveSession]]) -> None:
        """Targets for workspaces that became active; the global one when any is."""
        for h in active:
            if h not in self._targets:
                self._targets[h] = _Target()
                self._mapping_epoch += 1
        seen = frozenset((h, s[-1].session_id) for h, s in active.items())
        if active:
            if GLOBAL not in self._targets:
                self._targets[GLOBAL] = _Target()
                self._mapping_epoch += 1
            if seen != self._active_seen:
                self._targets[GLOBAL].dirty = True  # a new session: re-read its composers now
        self._active_seen = seen

    def _on_done(self, key: str, _task: asyncio.Task[None]) -> None:
        self._finished.append(key)
        self._wake.set()

    def _collect(self, now: float) -> bool:
        """Results of the reads that finished since the last round (only those are visited)."""
        succeeded = False
        while self._finished:
            key = self._finished.pop()
            target = self._targets.get(key)
            task = target.task if target is not None else None
            if target is None or task is None or not task.done():
                continue  # cancelled and dropped, or already collected
            target.task = None
            target.due = self._due(key, target, now)
            if key == GLOBAL:
                self._mapping_epoch += 1  # a global database may have appeared or gone
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, REDIS_DOWN):
                raise exc
            if exc is not None:
                log.error("unexpected failure while reading %s: %r", key, exc, exc_info=exc)
                self._component.fail("error", repr(exc))
            elif not task.cancelled():
                succeeded = True
        glob = self._targets.get(GLOBAL)
        if glob is not None and glob.task is None:
            if any(s.has_more() for s in self.global_dbs.states()):
                glob.dirty = True  # a catch-up goes on at once, not at the next poll
            settle_ms = self.global_dbs.next_settle_ms()
            if settle_ms is not None:
                wait_s = max(0.0, settle_ms / 1000 - self.poller.clock()) + 0.05
                glob.due = min(glob.due, now + wait_s)
        return succeeded

    def _due(self, key: str, target: _Target, now: float) -> float:
        """When to look at ``key`` again: the next timed poll, or ``WAL_RECHECK_S`` from now
        while the ``-wal`` it last saw holds a commit not yet visible (``Fingerprint.wal_settled``).

        A WAL commit becomes visible only once its frames are synced, after the file events
        that woke the read: under disk load the sync outlasted the watch's 20 ms settle, the
        read saw the old data, and nothing else would have woken a read before the safety poll
        (30 s). The checks are fingerprints (two ``stat`` calls, 96 bytes of ``-shm``).
        """
        due = _next_tick(now, self._interval(key, target))
        if key == GLOBAL:
            states = self.global_dbs.states()
        else:
            state = self._states.get(key)
            states = [state] if state is not None else []
        wall = time.time()  # mtimes are wall-clock times, whatever clock the monitor runs on
        if any(s.fingerprint is not None and not s.fingerprint.wal_settled(wall) for s in states):
            return min(due, now + WAL_RECHECK_S)
        return due

    def _interval(self, key: str, target: _Target) -> float:
        """The safety-net poll for watched folders; a fast poll where events cannot work."""
        if self.watcher is None or not target.folders:
            return self.cfg.poll_interval_seconds
        if all(self.watcher.mode(f) == "events" for f in target.folders):
            return self.cfg.poll_interval_seconds
        return min(self.cfg.fallback_poll_seconds, self.cfg.poll_interval_seconds)

    def _next_due(self) -> float:
        dues = [t.due for t in self._targets.values() if t.task is None]
        return min(dues) if dues else time.monotonic() + self.cfg.poll_interval_seconds

    def _sync_watch(self) -> None:
        """Watch the folders of every mapped target; show each workspace's detection mode."""
        by_folder: dict[Path, set[str]] = {}
        for key, target in self._targets.items():
            if key == GLOBAL:
                target.folders = tuple(sorted({p.parent for p in self.global_dbs.paths()}))
            else:
                state = self._states.get(key)
                target.folders = (state.path.parent,) if state is not None else ()
            for folder in target.folders:
                by_folder.setdefault(folder, set()).add(key)
        self._by_folder = by_folder
        if self.watcher is not None:
            self.watcher.set_dirs(set(by_folder))
        for key, wh in self.health.workspaces.items():
            target = self._targets.get(GLOBAL if key.startswith(GLOBAL_HEALTH_PREFIX) else key)
            if target is None:
                continue
            mode, reason = self._detection(target)
            if wh.change_detection != mode or wh.change_detection_reason != reason:
                wh.change_detection, wh.change_detection_reason = mode, reason

    def _detection(self, target: _Target) -> tuple[str, str | None]:
        if self.watcher is None:
            return "poll", "watch_files is false"
        if not target.folders:
            return "poll", "database not mapped yet"
        for folder in target.folders:
            if self.watcher.mode(folder) != "events":
                return "poll", self.watcher.reason(folder)
        return "events", None

    async def _read_target(self, key: str, active: dict[str, list[ActiveSession]]) -> None:
        if key == GLOBAL:
            await self.global_dbs.poll()
            return
        sessions = active.get(key)
        if sessions:
            async with self._sem:
                await self.poll_workspace(key, sessions)

    async def _finish_inflight(self, grace_s: float = 2.0) -> None:
        """On stop: let reads that are publishing finish; cancel those waiting on a lock."""
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        self._targets.clear()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop_inactive(self, active: dict[str, list[ActiveSession]]) -> None:
        """Forget every workspace whose sessions all ended (mapped or not, reading or not)."""
        known = set(self._states) | set(self._targets) | set(self.health.workspaces)
        for gone in known - set(active):
            if gone == GLOBAL:
                if not active:
                    self._cancel(gone)
                continue
            if gone.startswith(GLOBAL_HEALTH_PREFIX):
                continue  # the global databases' entries: GlobalDatabases manages them
            log.info("workspace %s has no active session: monitoring stopped", gone)
            self._states.pop(gone, None)
            self.poller.forget(gone)
            self._rollout_on.pop(gone, None)
            self._off_fingerprints.pop(gone, None)
            self.health.workspaces.pop(gone, None)
            self._cancel(gone)

    def _cancel(self, key: str) -> None:
        self._mapping_epoch += 1
        target = self._targets.pop(key, None)
        if target is not None and target.task is not None:
            target.task.cancel()

    async def poll_once(self) -> None:
        """Read every active workspace and the global databases once, and wait for all."""
        active = self.sessions.active_workspaces()
        self._drop_inactive(active)

        async def guarded(h: str, s: list[ActiveSession]) -> None:
            async with self._sem:
                await self.poll_workspace(h, s)

        results = await asyncio.gather(
            *(guarded(h, s) for h, s in active.items()), return_exceptions=True
        )
        self.polls += 1
        for result in results:
            if isinstance(result, REDIS_DOWN):
                raise result
            if isinstance(result, BaseException):
                # A bug in one workspace's handling must not stop the others.
                log.error("unexpected failure while polling: %r", result, exc_info=result)
                self._component.fail("error", repr(result))
        await self.global_dbs.poll()

    # ----------------------------------------------------------------- one workspace
    async def poll_workspace(self, workspace_hash: str, sessions: list[ActiveSession]) -> None:
        newest = sessions[-1]
        wh = self.health.workspace(workspace_hash)
        wh.workspace_path = newest.workspace_path or wh.workspace_path
        ids = [s.session_id for s in sessions]
        if wh.session_ids != ids:
            wh.session_ids = ids
        decision = self.rollout.decide(workspace_hash, newest.workspace_path or None)
        rollout = decision.to_json()
        if wh.rollout != rollout:
            wh.rollout = rollout
        self._rollout_on[workspace_hash] = decision.enabled
        started = time.perf_counter()
        state = self._states.get(workspace_hash)
        if state is None or not state.path.exists():
            mapping = await self.mapper.find_database(workspace_hash, newest.workspace_path or None)
            if mapping is None:
                where = newest.workspace_path or "(no path)"
                msg = f"no Cursor workspace database found for {where}"
                self.poller.report(wh, "unmapped", msg)
                self._states.pop(workspace_hash, None)
                return
            state = DatabaseState(Path(mapping.database))
            self._states[workspace_hash] = state
            wh.database = str(mapping.database)
            wh.storage_id = mapping.storage_id
            wh.mapping_strategy = mapping.strategy
            self._mapping_epoch += 1  # a new folder to watch
            glob = self._targets.get(GLOBAL)
            if glob is not None:
                glob.dirty = True  # its conversations in the global database can be routed now
            log.info(
                "workspace %s → %s (%s); syncing the last %g h",
                workspace_hash, mapping.database, mapping.strategy, self.cfg.sync_window_hours,
            )  # fmt: skip
        if not decision.enabled:
            # Tracked and mapped, never read: its watermarks wait where they are. A change of
            # its files is still activity (a stat, no read), so its session does not expire.
            wh.status = "rollout_off"
            wh.last_check = iso_now()
            try:
                fp = fingerprint(state.path)
            except CursorDbError:
                return
            if self._off_fingerprints.get(workspace_hash) != fp:
                if workspace_hash in self._off_fingerprints:
                    self.sessions.touch(workspace_hash)
                self._off_fingerprints[workspace_hash] = fp
            return
        self._off_fingerprints.pop(workspace_hash, None)
        dest = Destination(
            workspace_hash=workspace_hash,
            session_id=newest.session_id,
            workspace_path=newest.workspace_path or None,
            database_path=str(state.path),
            storage_id=wh.storage_id,
        )
        before = state.fingerprint
        published = await self.poller.poll(state, wh, lambda _item: dest)
        now = time.monotonic()
        if state.fingerprint != before or now >= self._reason_due.get(workspace_hash, 0.0):
            # Costs a walk over every session: refreshed on change and once per safety poll.
            wh.active_reason = self.sessions.active_reason(workspace_hash)
            self._reason_due[workspace_hash] = now + self.cfg.poll_interval_seconds
        if state.missing:
            self._mapping_epoch += 1
            self._states.pop(workspace_hash, None)
            self.mapper.invalidate(workspace_hash)
        if published is not None and state.fingerprint != before:
            wh.last_poll_ms = round((time.perf_counter() - started) * 1000, 3)
            self.sessions.touch(workspace_hash)  # in use: its session stays alive
