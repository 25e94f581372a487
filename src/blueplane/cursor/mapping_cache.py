"""The workspace mapper's persistent cache: hash -> mapping, and every storage id seen per hash.

One JSON file (``workspace_db_cache.json``), written atomically and at most once per
``save_interval_s`` while lookups run. A file of another format (the proposal's
``{hash: path}``) or an unreadable one is ignored: the mapper maps afresh.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from blueplane.health import write_json_atomic

logger = logging.getLogger("blueplane.workspace_mapper")

CACHE_VERSION = 1


class MappingCache:
    """Entries (``hash -> dict``) and storage ids (``hash -> ids``), and their file."""

    def __init__(self, path: Path, save_interval_s: float = 1.0) -> None:
        self.path = path
        self.save_interval_s = save_interval_s
        self.entries: dict[str, dict[str, Any]] = {}
        self.storage_ids: dict[str, set[str]] = {}
        self.dirty = False
        self._last_save = 0.0

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            logger.warning("workspace cache %s unreadable, starting empty: %s", self.path, exc)
            return
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            # The proposal's {hash: path} file may hold wrong (hash-in-name) mappings.
            logger.info("workspace cache %s has an old format; mapping afresh", self.path)
            return
        entries = data.get("entries")
        for h, e in entries.items() if isinstance(entries, dict) else []:
            if isinstance(e, dict) and all(
                isinstance(e.get(k), str) for k in ("database", "storage_id", "user_dir")
            ):
                self.entries[h] = e
        ids = data.get("storage_ids")
        for h, lst in ids.items() if isinstance(ids, dict) else []:
            if isinstance(lst, list):
                self.storage_ids[h] = {x for x in lst if isinstance(x, str)}

    def maybe_save(self) -> None:
        """Save if anything changed and the last save is ``save_interval_s`` old."""
        if self.dirty and time.monotonic() - self._last_save >= self.save_interval_s:
            self.save()

    def save(self) -> None:
        data = {
            "version": CACHE_VERSION,
            "entries": self.entries,
            "storage_ids": {h: sorted(v) for h, v in self.storage_ids.items()},
        }
        try:
            write_json_atomic(self.path, data, indent=1, sort_keys=True)
            self.dirty = False
            self._last_save = time.monotonic()
        except OSError as exc:
            logger.warning("cannot write workspace cache %s: %s", self.path, exc)
