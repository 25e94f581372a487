"""The global databases (``User/globalStorage/state.vscdb``): conversations of every workspace.

Cursor keeps its rich conversation data (``composerData:*``, ``bubbleId:*``, ``composerHeaders``,
``agentKv:blob:*``) in one database per profile, shared by all workspaces. Each cycle, while at
least one session is active, every global database is read with the shared ``DatabasePoller``
(fingerprint, short read-only transactions, retries, atomic publication), and each item is
routed to the active session of the workspace its composer belongs to.

Attribution of a composer to a workspace storage id, first that applies:

1. ``composerData.workspaceIdentifier.id`` (Cursor ≥ 3.12) — carried by the item itself;
2. ``composerHeaders.workspaceId`` (3.x) — carried by the header's item;
3. membership in the workspace's own ``composer.composerData`` (any era), read here for each
   active workspace (cached by the file's fingerprint);
4. what was learned earlier (1, 2) about the composer, kept in Redis
   (``blueplane:attribution:<database key>``) so a bubble is routed even when its composer was
   read in an earlier poll or before a restart.

A composer attributed to a workspace with no active session is not lost: when that workspace's
session starts, its composers are re-read by exact key and key range (``fetch_composers``) and
published; dedup keys stop anything already sent. Composers that cannot be attributed (yet)
are *parked* (``blueplane:parked:<database key>`` in Redis, counted in ``status`` as
``unattributed_composers``) and re-read by key as soon as their workspace becomes known, for
example when their ``composerData`` arrives after their first bubbles; they go to workspace
``unattributed`` instead only when ``include_unattributed`` is true.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from blueplane.broker import REDIS_DOWN
from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.db_poller import WINDOWED, DatabasePoller, DatabaseState
from blueplane.cursor.layouts import ALL_LAYOUTS, COMPOSER_SCOPED, Layout
from blueplane.cursor.layouts.base import TraceItem, Watermark
from blueplane.cursor.layouts.composer_data import COMPOSER_DATA_KEY, membership_ids
from blueplane.cursor.layouts.conversation import REPLAY
from blueplane.cursor.layouts.disk_bubbles import SETTLE_QUIET_MS, GlobalBubbles, newest_first
from blueplane.cursor.layouts.disk_kv import TABLE
from blueplane.cursor.layouts.jsonvalue import BadValue, load_json
from blueplane.cursor.sqlite_ro import (
    CursorDbError,
    Fingerprint,
    ReadOnlyDatabase,
    fingerprint,
    item_value,
    table_names,
)
from blueplane.events import iso_now
from blueplane.health import Health
from blueplane.keys import database_key
from blueplane.publisher import Destination
from blueplane.rollout import Rollout

if TYPE_CHECKING:
    import sqlite3

    from blueplane.cursor.session_monitor import ActiveSession, SessionMonitor

GLOBAL_HEALTH_PREFIX = "global:"  # health entries of the global databases

log = logging.getLogger("blueplane.global_db")

UNATTRIBUTED = "unattributed"
# Rounds of one poll while a layout says it has more rows to read (catch-up of a big file).
MAX_ROUNDS = 50
# Composers per read of a session-start re-read (see ``_replay``).
REPLAY_COMPOSERS = 10


class GlobalMapper(Protocol):
    """What the global databases need of the WorkspaceMapper."""

    def global_databases(self) -> list[Path]: ...
    def storage_ids_for(self, workspace_hash: str) -> set[str]: ...


@dataclass
class _GlobalState:
    db: DatabaseState
    attribution: dict[str, str] | None = None  # composer id -> workspace storage id
    learned: dict[str, str] = field(default_factory=dict)  # not yet saved to Redis
    parked: set[str] | None = None  # composers read before they could be attributed
    newly_parked: set[str] = field(default_factory=set)  # not yet saved to Redis


@dataclass
class _Targets:
    """Where each workspace storage id's items go, for this poll."""

    by_storage: dict[str, Destination] = field(default_factory=dict)
    membership: dict[str, str] = field(default_factory=dict)  # composer id -> storage id


class GlobalDatabases:
    """Reads the global databases and routes their items to the workspaces' sessions."""

    def __init__(
        self,
        config: CursorDatabaseMonitorConfig,
        sessions: SessionMonitor,
        mapper: GlobalMapper,
        poller: DatabasePoller,
        health: Health,
        rollout: Rollout | None = None,
    ) -> None:
        self.cfg = config
        self.rollout = rollout if rollout is not None else Rollout()
        self.sessions = sessions
        self.mapper = mapper
        self.poller = poller
        self.health = health
        self._states: dict[Path, _GlobalState] = {}
        self._replayed: set[tuple[str, str]] = set()  # (workspace hash, session id)
        self._membership: dict[Path, tuple[Fingerprint, set[str]]] = {}
        self.unattributed: set[str] = set()
        self.waiting: set[str] = set()  # composers of workspaces without an active session
        self._health = health.component("global_database")

    def paths(self) -> list[Path]:
        return list(self.mapper.global_databases())

    def states(self) -> list[DatabaseState]:
        return [gs.db for gs in self._states.values()]

    def next_settle_ms(self) -> int | None:
        """Earliest time a pending (streaming) bubble may settle by quiet: re-read then."""
        first: int | None = None
        for gs in self._states.values():
            for wm in (gs.db.watermarks or {}).values():
                pending = wm.get("pending")
                if not isinstance(pending, dict):
                    continue
                for entry in pending.values():
                    if isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[1], int):
                        at = entry[1] + SETTLE_QUIET_MS
                        first = at if first is None else min(first, at)
        return first

    # ----------------------------------------------------------------- entry point
    async def poll(self) -> None:
        """One pass over every global database; nothing is read when no session is active."""
        try:
            await self._poll()
        except REDIS_DOWN:
            raise
        except Exception as exc:  # a bug here must not stop the workspace databases
            log.error("global database poll failed: %r", exc, exc_info=exc)
            self._health.fail("error", repr(exc))

    async def _poll(self) -> None:
        tracked = self.sessions.active_workspaces()
        # Out-of-rollout workspaces: their composers are mapped (membership) but not routed,
        # so they wait; turning one on replays them like a session start.
        on = self.rollout.enabled
        active = {h: s for h, s in tracked.items() if on(h, s[-1].workspace_path or None)}
        if not active:
            return
        paths = self.paths()
        for path in paths:
            if self._quiet(path, active):
                continue
            targets = await self._targets(tracked, path, active)
            await self._poll_one(path, targets, active, tracked)
        self._health.status = "ok" if paths else "no_global_database"
        self._health.set_counter("global_databases", len(paths))
        self._health.set_counter("unattributed_composers", len(self.unattributed))
        self._health.set_counter("waiting_composers", len(self.waiting))

    # ----------------------------------------------------------------- one database
    async def _poll_one(
        self,
        path: Path,
        targets: _Targets,
        active: dict[str, list[ActiveSession]],
        tracked: dict[str, list[ActiveSession]] | None = None,
    ) -> None:
        gs = self._states.get(path)
        if gs is None:
            gs = self._states[path] = _GlobalState(DatabaseState(path))
        if gs.attribution is None:
            gs.attribution = await self._load_attribution(path)
        if gs.parked is None:
            gs.parked = await self._load_parked(path)
        wh = self.health.workspace(f"{GLOBAL_HEALTH_PREFIX}{database_key(str(path))}")
        wh.database = str(path)
        wh.mapping_strategy = "global_database"
        started = time.perf_counter()
        mapped = self._mapped(tracked)
        route = self._router(gs, targets, path)
        for _ in range(MAX_ROUNDS):
            if self._must_reread(gs.db):
                gs.db.fingerprint = None  # pending bubbles or an unfinished catch-up
            published = await self.poller.poll(gs.db, wh, route, "global")
            if published is None or not gs.db.has_more():
                break
            # A catch-up of a big file: the conversations of sessions that started (or were
            # mapped) go out as soon as the composers are read, by composer (a few index
            # ranges), not after the rest of the file's history.
            if tracked is not None and self._mapped(tracked) != mapped:
                targets = await self._targets(tracked, path, active)
                mapped = self._mapped(tracked)
                route = self._router(gs, targets, path)
            if self._composers_read(gs.db) and self._unreplayed(targets, active):
                self._note_progress(gs.db, wh)
                await self._replay_new_sessions(gs, targets, active, wh)
        self._note_progress(gs.db, wh)
        await self._replay_new_sessions(gs, targets, active, wh)
        await self._unpark(gs, targets, wh)
        await self._save_attribution(path, gs)
        wh.last_poll_ms = round((time.perf_counter() - started) * 1000, 3)

    def _mapped(self, tracked: dict[str, list[ActiveSession]] | None) -> frozenset[tuple[str, str]]:
        """Which tracked workspaces have a database (and storage id) yet: a change means
        new routing targets."""
        if tracked is None:
            return frozenset()
        out = set()
        for h in tracked:
            wh = self.health.workspaces.get(h)
            if wh is not None and wh.storage_id:
                out.add((h, wh.storage_id))
        return frozenset(out)

    def _unreplayed(self, targets: _Targets, active: dict[str, list[ActiveSession]]) -> bool:
        """A mapped workspace's session started and its conversations were not re-read."""
        mapped = {d.workspace_hash for d in targets.by_storage.values()}
        return any(
            h in mapped and (h, s[-1].session_id) not in self._replayed for h, s in active.items()
        )

    @staticmethod
    def _composers_read(state: DatabaseState) -> bool:
        """The composer layouts are caught up (their workspaces known); the bubbles may not."""
        if not state.watermarks:
            return False
        return not any(
            wm.get("more")
            for name, wm in state.watermarks.items()
            if name in COMPOSER_SCOPED and name != GlobalBubbles.name
        )

    def _quiet(self, path: Path, active: dict[str, list[ActiveSession]]) -> bool:
        """Nothing to do: the files did not change, no session started, nothing is parked,
        nothing streams or catches up. One ``stat`` instead of routing every workspace."""
        gs = self._states.get(path)
        if gs is None or gs.db.fingerprint is None or gs.parked or self._must_reread(gs.db):
            return False
        if {(h, s[-1].session_id) for h, s in active.items()} - self._replayed:
            return False
        try:
            same = fingerprint(path) == gs.db.fingerprint
        except CursorDbError:
            return False
        wh = self.health.workspaces.get(f"{GLOBAL_HEALTH_PREFIX}{database_key(str(path))}")
        if same and wh is not None:
            wh.last_check = iso_now()
            if wh.status == "ok":
                wh.status = "idle"
        return same

    def _must_reread(self, state: DatabaseState) -> bool:
        """Read although the file did not change: a catch-up goes on, or a bubble may settle."""
        if state.has_more():
            return True
        settle = self.next_settle_ms()
        return settle is not None and settle <= self.poller.context().now_ms

    def _note_progress(self, state: DatabaseState, wh: Any) -> None:
        """Catch-up progress of the bubble scan (the bulk of a big file) for ``status``."""
        wm = (state.watermarks or {}).get("disk_bubbles")
        if not isinstance(wm, dict) or not isinstance(wm.get("rowid"), int):
            return
        done, total = wm["rowid"], wm.get("max_rowid")
        if not isinstance(total, int) or total <= 0:
            return
        pct = round(100.0 * min(done, total) / total, 1)
        before = self._health.counters.get("catch_up_percent")
        self._health.set_counter("catch_up_percent", int(pct))
        wh.catch_up = {"rows_done": min(done, total), "rows_total": total, "percent": pct}
        if wm.get("more") and (before is None or int(pct) // 10 != before // 10):
            log.info("global database %s: first sync %.0f %% (rowid %d of %d)",
                     state.path, pct, done, total)  # fmt: skip
        elif not wm.get("more") and before is not None and before < 100:
            log.info("global database %s: caught up (rowid %d)", state.path, total)

    # ----------------------------------------------------------------- routing
    def _router(self, gs: _GlobalState, targets: _Targets, path: Path) -> Any:
        attribution = gs.attribution if gs.attribution is not None else {}
        include = self.cfg.include_unattributed
        fallback = Destination(
            workspace_hash=UNATTRIBUTED, session_id=UNATTRIBUTED, database_path=str(path)
        )

        def route(item: TraceItem) -> Destination | None:
            cid = getattr(item.payload, "composer_id", None)
            sid = item.workspace_storage_id
            if sid and cid and attribution.get(cid) != sid:
                attribution[cid] = sid
                gs.learned[cid] = sid
            if sid is None and cid:
                sid = attribution.get(cid) or targets.membership.get(cid)
            if sid is not None:
                dest = targets.by_storage.get(sid)
                if dest is None:
                    self.waiting.add(cid or item.payload.item_key())
                    return None
                self.unattributed.discard(cid or "")
                self.waiting.discard(cid or "")
                return dest
            self.unattributed.add(cid or item.payload.item_key())
            if include:
                return fallback
            if cid and gs.parked is not None and cid not in gs.parked:
                gs.parked.add(cid)  # re-read by key once its workspace is known
                gs.newly_parked.add(cid)
            return None

        return route

    async def _targets(
        self,
        tracked: dict[str, list[ActiveSession]],
        path: Path,
        enabled: dict[str, list[ActiveSession]] | None = None,
    ) -> _Targets:
        """Where each storage id's items go (workspaces in ``enabled`` only), and which
        composers belong to which storage id (every tracked workspace)."""
        out = _Targets()
        for h, sessions in tracked.items():
            newest = sessions[-1]
            wh = self.health.workspaces.get(h)
            sids: set[str] = set(self.mapper.storage_ids_for(h))
            if wh is not None and wh.storage_id:
                sids.add(wh.storage_id)
            for sid in sids if enabled is None or h in enabled else ():
                out.by_storage[sid] = Destination(
                    workspace_hash=h,
                    session_id=newest.session_id,
                    workspace_path=newest.workspace_path or None,
                    database_path=str(path),
                    storage_id=sid,
                )
            if wh is not None and wh.database and wh.storage_id:
                members = await asyncio.to_thread(self._workspace_members, Path(wh.database))
                for cid in members:
                    out.membership.setdefault(cid, wh.storage_id)
        return out

    def _workspace_members(self, db_path: Path) -> set[str]:
        """Composer ids in a workspace's ``composer.composerData``; re-read when it changes."""
        db = ReadOnlyDatabase(db_path, self.cfg.query_timeout_seconds)
        try:
            fp = db.fingerprint()
            cached = self._membership.get(db_path)
            if cached is not None and cached[0] == fp:
                return cached[1]
            _rowid, value = db.read_sync(
                lambda conn: (
                    item_value(conn, COMPOSER_DATA_KEY)
                    if "ItemTable" in table_names(conn)
                    else (0, None)
                )
            )
        except CursorDbError as exc:
            log.debug("membership of %s not read: %s", db_path, exc)
            return self._membership.get(db_path, (None, set()))[1]
        ids: set[str] = set()
        if value is not None:
            try:
                ids = membership_ids(load_json(COMPOSER_DATA_KEY, value))
            except BadValue:
                ids = set()  # the workspace layout reports it in that workspace's health
        self._membership[db_path] = (fp, ids)
        return ids

    # ----------------------------------------------------------------- session start
    async def _replay_new_sessions(
        self,
        gs: _GlobalState,
        targets: _Targets,
        active: dict[str, list[ActiveSession]],
        wh: Any,
    ) -> None:
        """Re-read the composers of workspaces whose session started since the last poll.

        Every such workspace is re-read in one transaction and published in one pass (100
        sessions starting together cost one read, not 100).
        """
        live = {(h, s[-1].session_id) for h, s in active.items()}
        self._replayed &= live
        new: list[tuple[str, tuple[str, str]]] = []
        sids: set[str] = set()
        for h, sessions in active.items():
            key = (h, sessions[-1].session_id)
            if key in self._replayed:
                continue
            own = {sid for sid, d in targets.by_storage.items() if d.workspace_hash == h}
            if not own:
                continue  # not mapped yet: the next poll tries again
            new.append((h, key))
            sids |= own
        if not new:
            return
        members = {cid for cid, sid in targets.membership.items() if sid in sids}
        known = {cid for cid, sid in (gs.attribution or {}).items() if sid in sids}
        sent = await self._replay(gs, members | known, sids, targets, wh)
        for _h, key in new:
            self._replayed.add(key)
            self._health.count("session_replays")
        if sent:
            first = new[0][0] if len(new) == 1 else f"{new[0][0]} and {len(new) - 1} more"
            log.info("workspace %s: %d trace(s) from the global database on session start",
                     first, sent)  # fmt: skip

    async def _replay(
        self,
        gs: _GlobalState,
        composer_ids: set[str],
        storage_ids: set[str],
        targets: _Targets,
        wh: Any,
    ) -> int:
        layouts = [lay for lay in ALL_LAYOUTS if lay.name in COMPOSER_SCOPED]
        db = ReadOnlyDatabase(gs.db.path, self.cfg.query_timeout_seconds)
        cutoff_ms = self.poller.context("global").sync_cutoff_ms

        def all_ids(conn: sqlite3.Connection) -> list[str]:
            ids = set(composer_ids)
            tables = table_names(conn)
            if "composerHeaders" in tables and storage_ids:
                marks = ",".join("?" * len(storage_ids))
                ids |= {
                    r[0]
                    for r in conn.execute(
                        f"SELECT composerId FROM composerHeaders WHERE workspaceId IN ({marks})",
                        sorted(storage_ids),
                    )
                    if isinstance(r[0], str)
                }
            if TABLE in tables:
                return newest_first(conn, ids)
            return sorted(ids)

        def fetch(ids: list[str], conn: sqlite3.Connection) -> dict[str, Any]:
            tables = table_names(conn)
            raw: dict[str, Any] = {}
            for layout in layouts:
                if layout.detect(conn, tables):
                    if layout.name in WINDOWED:
                        raw[layout.name] = layout.fetch_composers(conn, ids, cutoff_ms)  # type: ignore[attr-defined]
                    else:
                        raw[layout.name] = layout.fetch_composers(conn, ids)  # type: ignore[attr-defined]
            return raw

        try:
            ids = await db.read(all_ids)
        except CursorDbError as exc:
            log.warning("session-start re-read of %s failed: %s", gs.db.path, exc)
            return 0
        # A few composers per read: memory stays bounded however many sessions start, and
        # the next read runs in its thread while this one is published. Newest conversations
        # first (``newest_first``): an old history costs SQLite a JSON parse per bubble to find
        # it outside the sync window, and the conversations in use need not wait for that.
        chunks = [ids[i : i + REPLAY_COMPOSERS] for i in range(0, len(ids), REPLAY_COMPOSERS)]
        watermarks = await self.poller.load_watermarks(gs.db)
        ctx = self.poller.context("global")
        route = self._router(gs, targets, gs.db.path)
        total = 0
        reading: asyncio.Future[dict[str, Any]] | None = None
        try:
            for k, chunk in enumerate(chunks):
                if reading is None:
                    reading = asyncio.ensure_future(db.read(functools.partial(fetch, chunk)))
                try:
                    raw = await reading
                except CursorDbError as exc:
                    reading = None
                    log.warning("session-start re-read of %s failed: %s", gs.db.path, exc)
                    break
                reading = None
                if k + 1 < len(chunks):
                    reading = asyncio.ensure_future(
                        db.read(functools.partial(fetch, chunks[k + 1]))
                    )
                total += await self._publish_replayed(gs, layouts, raw, watermarks, ctx, route)
        finally:
            if reading is not None:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        wh.items_published += total
        return total

    async def _publish_replayed(
        self,
        gs: _GlobalState,
        layouts: list[Layout],
        raw: dict[str, Any],
        watermarks: dict[str, Watermark],
        ctx: Any,
        route: Any,
    ) -> int:
        """Extract and publish one chunk of a session-start re-read (watermarks unmoved)."""
        total = 0
        for layout in layouts:
            if layout.name not in raw:
                continue
            current: Watermark = watermarks.get(layout.name, {})
            result, revisions = await self.poller.extract(
                layout, raw[layout.name], {**current, REPLAY: True}, ctx, str(gs.db.path)
            )
            routed = [(d, i) for i in result.items if (d := route(i)) is not None]
            if routed or revisions:
                total += await self.poller.publisher.publish(
                    routed, str(gs.db.path), layout.name, current, revisions=revisions
                )
        return total

    # ----------------------------------------------------------------- parked composers
    async def _unpark(self, gs: _GlobalState, targets: _Targets, wh: Any) -> None:
        """Publish parked composers whose workspace became known (and has a session)."""
        if not gs.parked:
            return
        attribution = gs.attribution or {}
        ready: dict[str, str] = {}
        for cid in gs.parked:
            sid = attribution.get(cid) or targets.membership.get(cid)
            if sid is not None and sid in targets.by_storage:
                ready[cid] = sid
        if not ready:
            return
        sent = await self._replay(gs, set(ready), set(), targets, wh)
        gs.parked -= set(ready)
        self.unattributed -= set(ready)
        await self.poller.publisher.redis.srem(
            self.poller.publisher.keys.parked(str(gs.db.path)), *ready
        )
        log.info("global database %s: %d parked conversation(s) attributed; %d trace(s) sent",
                 gs.db.path, len(ready), sent)  # fmt: skip

    async def _load_parked(self, path: Path) -> set[str]:
        raw = await self.poller.publisher.redis.smembers(
            self.poller.publisher.keys.parked(str(path))
        )
        out = {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
        self.unattributed |= out
        return out

    # ----------------------------------------------------------------- durable attribution
    async def _load_attribution(self, path: Path) -> dict[str, str]:
        raw = await self.poller.publisher.redis.hgetall(
            self.poller.publisher.keys.attribution(str(path))
        )
        out: dict[str, str] = {}
        for k, v in raw.items():
            key = k.decode() if isinstance(k, bytes) else str(k)
            out[key] = v.decode() if isinstance(v, bytes) else str(v)
        return out

    async def _save_attribution(self, path: Path, gs: _GlobalState) -> None:
        if gs.learned:
            await self.poller.publisher.redis.hset(
                self.poller.publisher.keys.attribution(str(path)), mapping=gs.learned
            )
            gs.learned = {}
        if gs.newly_parked:
            await self.poller.publisher.redis.sadd(
                self.poller.publisher.keys.parked(str(path)), *gs.newly_parked
            )
            gs.newly_parked = set()
