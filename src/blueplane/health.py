"""Health of the server and of every monitored workspace, as ``blueplane status`` shows it.

Components write here; the server saves a snapshot to ``BLUEPLANE_HOME/status.json`` when
something changed, so that ``status`` works from another process, even while Redis is away.
Every change to a health record bumps one generation counter: an idle server serialises and
writes nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueplane.events import iso_now

MAX_PROBLEMS = 5


class _Tracked:
    """Bumps the shared generation on every attribute write that changes a value.

    Components set ``status = "ok"`` on every loop; only a real change counts.
    """

    generation: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get(name, _MISSING)  # not getattr: class-level defaults
        if old is value or (isinstance(value, str | int | float | type(None)) and old == value):
            return
        object.__setattr__(self, name, value)
        _Tracked.generation += 1


_MISSING = object()


@dataclass
class WorkspaceHealth(_Tracked):
    workspace_hash: str
    workspace_path: str | None = None
    session_ids: list[str] = field(default_factory=list)
    database: str | None = None
    storage_id: str | None = None
    mapping_strategy: str | None = None
    status: str = "pending"
    layout: str | None = None
    last_check: str | None = None
    last_success: str | None = None
    last_change: str | None = None
    errors: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    items_published: int = 0
    last_poll_ms: float | None = None
    problems: list[str] = field(default_factory=list)
    # "events" (file events drive reads) or "poll" (timed polls only), and why it polls.
    change_detection: str | None = None
    change_detection_reason: str | None = None
    # Why this workspace is monitored (its session, last activity, expiry).
    active_reason: str | None = None
    # A big database's first sync: rows done / total.
    catch_up: dict[str, Any] | None = None
    # The migration's feature flag for this workspace: {"enabled": bool, "reason": "…"}.
    rollout: dict[str, Any] | None = None

    def ok(self, status: str = "ok") -> None:
        now = iso_now()
        self.status = status
        self.last_check = now
        self.last_success = now

    def fail(self, status: str, message: str) -> None:
        now = iso_now()
        self.status = status
        self.last_check = now
        self.errors += 1
        self.last_error = message
        self.last_error_at = now

    def note_problems(self, problems: list[str]) -> None:
        if problems:
            self.problems = (self.problems + problems)[-MAX_PROBLEMS:]
            self.last_error = problems[-1]
            self.last_error_at = iso_now()


@dataclass
class ComponentHealth(_Tracked):
    status: str = "starting"
    last_error: str | None = None
    last_error_at: str | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
        _Tracked.generation += 1

    def set_counter(self, name: str, value: int) -> None:
        if self.counters.get(name) != value:
            self.counters[name] = value
            _Tracked.generation += 1

    def fail(self, status: str, message: str) -> None:
        self.status = status
        self.last_error = message
        self.last_error_at = iso_now()


@dataclass
class Health:
    workspaces: dict[str, WorkspaceHealth] = field(default_factory=dict)
    components: dict[str, ComponentHealth] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)

    def workspace(self, workspace_hash: str) -> WorkspaceHealth:
        if workspace_hash not in self.workspaces:
            self.workspaces[workspace_hash] = WorkspaceHealth(workspace_hash)
        return self.workspaces[workspace_hash]

    @property
    def generation(self) -> int:
        """Changes whenever any record changed (compare to skip writing an unchanged status)."""
        return _Tracked.generation + len(self.workspaces) + len(self.components)

    def component(self, name: str) -> ComponentHealth:
        if name not in self.components:
            self.components[name] = ComponentHealth()
        return self.components[name]

    def snapshot(self) -> dict[str, Any]:
        return {
            "written_at": iso_now(),
            "server": dict(self.server),
            # Shallow copies: the fields are plain values, lists and dicts of plain values
            # (``asdict`` deep-copies, ~20x slower with 100 workspaces).
            "components": {k: dict(vars(v)) for k, v in sorted(self.components.items())},
            "workspaces": {k: dict(vars(v)) for k, v in sorted(self.workspaces.items())},
        }

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.snapshot())


def write_json_atomic(
    path: Path, data: Any, *, indent: int | None = None, sort_keys: bool = False
) -> None:
    """Write ``data`` as JSON so a reader sees the old file or the new one, never a part:
    a temporary file beside it, then ``os.replace``; the temporary file is removed on error."""
    sep = (",", ":") if indent is None else (",", ": ")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # Compact by default: dumps with indent=None uses the C encoder; json.dump and any
            # indent use the pure-Python one (status.json of 100 workspaces, written often).
            fh.write(json.dumps(data, indent=indent, sort_keys=sort_keys, separators=sep))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
