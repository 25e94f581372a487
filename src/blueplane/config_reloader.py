"""ConfigReloader: rereads the config on ``SIGHUP`` and when the config file changes.

What it applies at run time is the ``feature_flags:`` section (the migration's rollout), within
a second of the change: the new flags go to the shared ``Rollout``, which the database monitor
watches; no other component is restarted. Changes to any other section are named in one log
line as needing a restart. A config that cannot be used (bad YAML, a rollout percent outside
0–100, an unknown key) is one log line naming the file and the key, recorded in ``status``
(component ``config``), and the config in force stays as it was.

The file is watched through its folder (editors replace files by renaming), with watchfiles;
each wake-up compares the file's (inode, size, mtime) so unrelated files in the folder cost one
``stat``. Where the folder cannot be watched, the file is polled every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import awatch

from blueplane.aio import sleep_or_stop, wait_any
from blueplane.config import ConfigError, Settings, load_settings
from blueplane.health import Health
from blueplane.rollout import Rollout, describe

log = logging.getLogger("blueplane.config_reloader")

POLL_S = 0.25  # fallback poll of the file, and the watcher's wake-up when nothing happens
DEBOUNCE_MS = 50
# Sections applied at run time; a change anywhere else is reported as needing a restart.
LIVE_SECTIONS = frozenset({"feature_flags"})

KnownWorkspaces = Callable[[], Iterable[tuple[str, str | None]]]


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigReloader:
    def __init__(
        self,
        settings: Settings,
        rollout: Rollout,
        health: Health,
        *,
        known_workspaces: KnownWorkspaces | None = None,
        active_workspaces: KnownWorkspaces | None = None,
        load: Callable[[Path | None], Settings] = load_settings,
    ) -> None:
        self.settings = settings
        self.path = settings.config_file
        self.rollout = rollout
        self.health = health.component("config")
        self._server = health.server  # its "warnings" list is shown by `status`
        # What include/exclude entries can name: ``known_workspaces`` may block (it scans
        # Cursor's folders: run in a thread), ``active_workspaces`` is read on the loop.
        self.known_workspaces = known_workspaces
        self.active_workspaces = active_workspaces
        self._load = load
        self._requested = asyncio.Event()
        self._signature = _signature(self.path)
        self.reloads = 0  # successful rereads (tests wait on it)
        # Set once the file watcher runs (its first wake-up): changes from then on are seen.
        self.watching = asyncio.Event()
        self.failures = 0

    def request(self, why: str = "SIGHUP") -> None:
        """Reread soon (a signal handler calls this; it must not block)."""
        log.info("%s: rereading the config", why)
        self._requested.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.health.status = "ok"
        self.health.set_counter("reloads", 0)
        watch = asyncio.create_task(self._watch(stop), name="config-watch")
        try:
            while not stop.is_set():
                await wait_any([stop, self._requested], None)
                if stop.is_set():
                    break
                self._requested.clear()
                await self.reload()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def reload(self) -> bool:
        """Reread and apply; False (old config kept, one log line) when it cannot be used."""
        self._signature = _signature(self.path)
        try:
            new = await asyncio.to_thread(self._load, self.path)
        except ConfigError as exc:
            self.failures += 1
            self.health.count("reload_failures")
            self.health.fail("invalid", f"{exc}; the previous config stays in force")
            log.error("config reload rejected: %s; the previous config stays in force", exc)
            return False
        self.reloads += 1
        self.health.count("reloads")
        self.health.status, self.health.last_error = "ok", None
        restart = sorted(
            name
            for name in type(new).model_fields
            if name not in LIVE_SECTIONS and getattr(new, name) != getattr(self.settings, name)
        )
        if restart:
            log.warning("config changed in %s: applied at the next restart", ", ".join(restart))
        if self.rollout.update(new.feature_flags):
            log.info("feature flags reloaded: %s", describe(new.feature_flags))
            await self.warn_unknown_entries()
        self.settings = new
        return True

    async def warn_unknown_entries(self) -> list[str]:
        """One warning line per include/exclude entry that names no known workspace."""
        f = self.rollout.flags
        if self.known_workspaces is None or not (
            f.python_db_monitor_include or f.python_db_monitor_exclude
        ):
            self._show_warnings([])
            return []
        active = list(self.active_workspaces()) if self.active_workspaces is not None else []
        known = await asyncio.to_thread(lambda: list(self.known_workspaces()))  # type: ignore[misc]
        known += active
        warnings = self.rollout.unknown_entries(known)
        for w in warnings:
            log.warning("%s", w)
        self._show_warnings(warnings)
        return warnings

    def _show_warnings(self, warnings: list[str]) -> None:
        """The flags' warnings in ``status`` (replacing those of the previous flags)."""
        kept = [w for w in self._server.get("warnings", []) if not w.startswith("feature_flags.")]
        if kept or warnings:
            self._server["warnings"] = kept + warnings
        else:
            self._server.pop("warnings", None)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Request a reload whenever the file itself changed (created, replaced, written)."""
        if self.path is None:
            return
        folder = self.path.parent
        while not stop.is_set():
            try:
                async for _changes in awatch(
                    folder, stop_event=stop, debounce=DEBOUNCE_MS, step=DEBOUNCE_MS,
                    recursive=False, rust_timeout=int(POLL_S * 4000), yield_on_timeout=True,
                ):  # fmt: skip
                    self.watching.set()
                    self._check()
            except (OSError, RuntimeError) as exc:  # folder missing or not watchable
                log.warning("cannot watch %s (%s); polling it every %g s", folder, exc, POLL_S)
                while not stop.is_set() and not folder.is_dir():
                    await sleep_or_stop(stop, POLL_S)
                    self._check()
                if not stop.is_set():
                    await self._poll(stop, folder)

    async def _poll(self, stop: asyncio.Event, folder: Path) -> None:
        for _ in range(40):  # ~10 s of polling, then try watching again
            if await sleep_or_stop(stop, POLL_S):
                return
            self._check()

    def _check(self) -> None:
        sig = _signature(self.path)
        if sig != self._signature:
            self._signature = sig
            if sig is None:
                log.warning("config file %s is gone; keeping the config in force", self.path)
                return
            self.request(f"config file {self.path} changed")
