"""Which workspaces the Python database monitor publishes for: the migration's feature flag.

The rule (DESIGN §6) is deterministic, so the same workspaces stay in the rollout across
restarts and machines: a workspace is in when
``int(sha256(workspace_hash.encode()).hexdigest()[:8], 16) % 100 < percent``. The master switch
``python_db_monitor_enabled`` comes first, then ``python_db_monitor_exclude`` (exclude wins),
then ``python_db_monitor_include``, then the bucket. A workspace that is out is still tracked
and mapped; only reading and publishing its items is held back, so its watermarks stay where
they were and turning it on again resumes from them.

Flags can change at run time (``ConfigReloader``): ``update`` swaps them and bumps ``epoch`` /
sets ``changed`` so the database monitor re-decides at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from blueplane.config import FeatureFlagsConfig
from blueplane.events import normalise_workspace_path, workspace_hash

log = logging.getLogger("blueplane.rollout")

_HEX16 = frozenset("0123456789abcdef")


def bucket(workspace_hash_: str) -> int:
    """The workspace's stable bucket, 0–99."""
    return int(hashlib.sha256(workspace_hash_.encode()).hexdigest()[:8], 16) % 100


def _is_hash(entry: str) -> bool:
    return len(entry) == 16 and set(entry) <= _HEX16


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    enabled: bool
    reason: str

    def to_json(self) -> dict[str, bool | str]:
        return {"enabled": self.enabled, "reason": self.reason}


class _Entries:
    """Include or exclude entries: hashes as given, folder paths normalised and hashed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.raw = [e for e in entries if e.strip()]
        self.hashes: dict[str, str] = {}  # workspace hash -> the entry that names it
        self.paths: dict[str, str] = {}  # normalised folder path -> the entry
        for entry in self.raw:
            e = entry.strip()
            if _is_hash(e):
                self.hashes[e] = entry
            else:
                norm = normalise_workspace_path(e)
                self.paths[norm] = entry
                self.hashes.setdefault(workspace_hash(norm), entry)

    def match(self, whash: str, path: str | None) -> str | None:
        hit = self.hashes.get(whash)
        if hit is None and path:
            hit = self.paths.get(normalise_workspace_path(path))
        return hit


class Rollout:
    """The current flags and the decision for each workspace."""

    def __init__(self, flags: FeatureFlagsConfig | None = None) -> None:
        self.epoch = 0
        self.changed = asyncio.Event()
        self._set(flags or FeatureFlagsConfig())

    @property
    def flags(self) -> FeatureFlagsConfig:
        return self._flags

    def _set(self, flags: FeatureFlagsConfig) -> None:
        self._flags = flags
        self._include = _Entries(flags.python_db_monitor_include)
        self._exclude = _Entries(flags.python_db_monitor_exclude)

    def update(self, flags: FeatureFlagsConfig) -> bool:
        """Apply new flags; True (and ``changed`` set) when they differ from the current ones."""
        if flags == self._flags:
            return False
        self._set(flags)
        self.epoch += 1
        self.changed.set()
        return True

    def decide(self, whash: str, workspace_path: str | None = None) -> RolloutDecision:
        f = self._flags
        if not f.python_db_monitor_enabled:
            return RolloutDecision(False, "flag off")
        if self._exclude.match(whash, workspace_path) is not None:
            return RolloutDecision(False, "excluded")
        if self._include.match(whash, workspace_path) is not None:
            return RolloutDecision(True, "included")
        pct = f.python_db_monitor_rollout_percent
        b = bucket(whash)
        if b < pct:
            return RolloutDecision(True, f"in rollout (bucket {b} < {pct})")
        return RolloutDecision(False, f"not in rollout (bucket {b} ≥ {pct})")

    def enabled(self, whash: str, workspace_path: str | None = None) -> bool:
        return self.decide(whash, workspace_path).enabled

    def unknown_entries(self, known: Iterable[tuple[str, str | None]]) -> list[str]:
        """Warnings for include/exclude entries that name none of the ``known`` workspaces
        (hash, folder path); each names its key."""
        pairs = list(known)
        out: list[str] = []
        for key, entries in (
            ("python_db_monitor_include", self._include),
            ("python_db_monitor_exclude", self._exclude),
        ):
            for entry in entries.raw:
                single = _Entries([entry])
                if not any(single.match(h, p) is not None for h, p in pairs):
                    out.append(
                        f"feature_flags.{key}: {entry!r} names no known workspace "
                        "(neither a workspace hash nor a folder Cursor has opened)"
                    )
        return out


def describe(flags: FeatureFlagsConfig) -> str:
    """One line for the log: what the flags say."""
    if not flags.python_db_monitor_enabled:
        return "Python database monitor off (python_db_monitor_enabled: false)"
    parts = [f"rollout {flags.python_db_monitor_rollout_percent} %"]
    if flags.python_db_monitor_include:
        parts.append(f"{len(flags.python_db_monitor_include)} included")
    if flags.python_db_monitor_exclude:
        parts.append(f"{len(flags.python_db_monitor_exclude)} excluded")
    return "Python database monitor on: " + ", ".join(parts)
