"""ChangeWatcher: file events on the folders that hold Cursor's databases, so reads happen at once.

One watcher covers every folder (one inotify instance, not one per workspace): on Linux the
quiet, timer-read inotify watch (``inotify_poll``; Cursor's writes wake nothing of ours),
elsewhere ``watchfiles``; non-recursively, and reports only writes to ``state.vscdb``, its
``-wal`` and its ``-journal``. ``-shm`` is ignored on purpose: readers touch it too, and our own
reads must not wake us. Bursts are coalesced (at most one report per ``debounce_ms``), so a
streamed answer written many times a second costs one read per 50 ms, not one per write.

Where events cannot work, a folder falls back to polling and says why (``mode``/``reason``):
- network and VM mounts (9p, drvfs, NFS, SMB, sshfs…) whose changes made elsewhere raise no event;
- a folder added when the watch limit is reached (the folders already watched stay watched);
- a watcher that dies: its folders are polled, and watching is tried again after a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from blueplane.aio import wait_any

log = logging.getLogger("blueplane.change_watcher")
# watchfiles logs every batch at INFO ("1 change detected"): one line per Cursor write.
logging.getLogger("watchfiles.main").setLevel(logging.WARNING)

WATCHED_NAMES = frozenset({"state.vscdb", "state.vscdb-wal", "state.vscdb-journal"})
# File systems whose changes, made by another machine or kernel, raise no local file event.
UNWATCHABLE_FS = frozenset(
    {
        "9p", "v9fs", "drvfs", "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs",
        "fuse.sshfs", "sshfs", "afpfs", "vboxsf", "prl_fs", "fuse.rclone", "ncpfs", "coda",
    }
)  # fmt: skip
RETRY_AFTER_DEATH_S = 60.0
# A watcher that has run this long without failing has set up its watches.
SETTLED_S = 1.0
# A new set of folders restarts the watch once no other set came for RESTART_QUIET_S (at most
# RESTART_MAX_WAIT_S after the first): a first sync maps 100 workspaces one after another, and
# each restart re-adds every watch. Meanwhile the running watch keeps reporting its folders,
# and a new folder's database is read when it is mapped anyway.
RESTART_QUIET_S = 0.2
RESTART_MAX_WAIT_S = 1.0

WatchFn = Callable[..., AsyncIterator[set[tuple[Change, str]]]]


def mount_fs_type(path: Path) -> str | None:
    """File-system type of the mount holding ``path`` (Linux ``/proc/self/mountinfo``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        target = os.path.realpath(path)
        best, fstype = "", None
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, right.split()[0]
        return fstype
    except OSError as exc:
        log.debug("mount type of %s unknown: %s", path, exc)
        return None


def _db_file(change: Change, path: str) -> bool:
    return os.path.basename(path) in WATCHED_NAMES


class ChangeWatcher:
    def __init__(
        self,
        debounce_ms: int,
        *,
        fs_type: Callable[[Path], str | None] = mount_fs_type,
        watch: WatchFn = awatch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.debounce_ms = debounce_ms
        self._fs_type = fs_type
        self._watch = watch
        self._clock = clock
        self._wanted: set[Path] = set()
        self._watched: set[Path] = set()  # folders the running watcher covers
        self._good: set[Path] = set()  # folders a watcher covered without failing
        self._failed: dict[Path, str] = {}  # folder -> why it is polled instead
        self._retry_at: float | None = None
        self._changed: set[Path] = set()
        self._fs_types: dict[Path, str | None] = {}  # mounts do not change under a folder
        self._restart = asyncio.Event()
        self.epoch = 0  # bumped whenever which folders are watched or polled changes
        self.wake = asyncio.Event()  # set when a watched folder changed
        self.batches = 0  # change batches received (after debouncing)
        self.starts = 0  # watches started (a restart for new folders is one more)

    # ----------------------------------------------------------------- what the monitor asks
    def set_dirs(self, dirs: set[Path]) -> None:
        """The folders to watch; the watcher restarts only when the set changes."""
        if dirs != self._wanted:
            self._wanted = set(dirs)
            for gone in set(self._failed) - self._wanted:
                del self._failed[gone]
            self._restart.set()

    def mode(self, folder: Path) -> str:
        return "events" if folder in self._watched and folder in self._good else "poll"

    def reason(self, folder: Path) -> str | None:
        if self.mode(folder) == "events":
            return None
        return self._failed.get(folder, "watch not set up yet")

    def take(self) -> set[Path]:
        """Folders that changed since the last call."""
        out, self._changed = self._changed, set()
        self.wake.clear()
        return out

    # ----------------------------------------------------------------- the watch loop
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._restart.clear()
            if self._retry_at is not None and self._clock() >= self._retry_at:
                self._retry_at = None
                self._failed = {d: r for d, r in self._failed.items() if r.startswith("mount")}
            targets = self._watchable()
            if not targets:
                wait = None if self._retry_at is None else self._retry_at - self._clock()
                await wait_any([stop, self._restart], wait if wait is not None else 3600.0)
                continue
            await self._watch_once(targets, stop)

    def _watchable(self) -> list[Path]:
        out = []
        for folder in sorted(self._wanted):
            if folder in self._failed:
                continue
            if folder not in self._fs_types:
                self._fs_types[folder] = self._fs_type(folder)
            fstype = self._fs_types[folder]
            if fstype in UNWATCHABLE_FS:
                self._fail([folder], f"mount type {fstype}: file events do not cover it")
            elif not folder.is_dir():
                continue  # not there (yet): the monitor's poll notices when it appears
            else:
                out.append(folder)
        return out

    async def _watch_once(self, targets: list[Path], stop: asyncio.Event) -> None:
        halt = asyncio.Event()
        started = self._clock()

        async def relay() -> None:
            await wait_any([stop, self._restart], SETTLED_S)
            if not halt.is_set() and not stop.is_set() and not self._restart.is_set():
                # Running for a while: the watches are in place. Whatever was written while
                # no watcher ran (the restart) is found by one fingerprint check per folder.
                self._good = set(targets)
                self._changed.update(targets)
                self.epoch += 1
                self.wake.set()
            await wait_any([stop, self._restart], None)
            await self._coalesce_restarts(stop)
            halt.set()

        relay_task = asyncio.create_task(relay())
        self._watched = set(targets)
        self.starts += 1
        try:
            async for changes in self._watch(
                *targets, watch_filter=_db_file, debounce=self.debounce_ms,
                step=self.debounce_ms, stop_event=halt, recursive=False,
            ):  # fmt: skip
                for _change, path in changes:
                    self._changed.add(Path(path).parent)
                self.batches += 1
                self.wake.set()
        except (OSError, RuntimeError) as exc:
            self._on_failure(targets, exc, self._clock() - started)
        finally:
            halt.set()
            relay_task.cancel()
            self._watched = set()
            self.epoch += 1

    async def _coalesce_restarts(self, stop: asyncio.Event) -> None:
        """Wait until the folders stop changing (a burst of ``set_dirs``): one restart."""
        deadline = self._clock() + RESTART_MAX_WAIT_S
        while not stop.is_set() and self._restart.is_set():
            left = deadline - self._clock()
            if left <= 0:
                return
            self._restart.clear()
            await wait_any([stop, self._restart], min(RESTART_QUIET_S, left))
        self._restart.set()  # the run loop restarts with the folders wanted now

    def _on_failure(self, targets: list[Path], exc: BaseException, ran_s: float) -> None:
        new = [d for d in targets if d not in self._good]
        if ran_s < SETTLED_S and new and len(new) < len(targets):
            # Adding folders failed (typically the inotify watch limit): poll only those.
            self._fail(new, f"cannot watch: {exc}")
            return
        self._fail(targets, f"file watcher stopped: {exc}")
        self._retry_at = self._clock() + RETRY_AFTER_DEATH_S

    def _fail(self, folders: list[Path], why: str) -> None:
        fresh = [d for d in folders if self._failed.get(d) != why]
        for d in folders:
            self._failed[d] = why
        self.epoch += 1
        if fresh:
            shown = ", ".join(str(d) for d in fresh[:3]) + (" …" if len(fresh) > 3 else "")
            log.warning("change detection falls back to polling for %d folder(s) (%s): %s",
                        len(fresh), shown, why)  # fmt: skip
        self._changed.update(folders)  # read them now: changes may have been missed
        self.wake.set()

    def describe(self) -> dict[str, Any]:
        return {
            "watched_folders": len(self._watched),
            "polled_folders": len(self._wanted - self._watched),
            "change_batches": self.batches,
        }
