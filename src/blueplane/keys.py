"""Every Redis key name Blueplane uses, in one place.

Components build their keys here and nowhere else, so a key is renamed (or a new one checked
for collisions) in one file; other modules ask the component that owns a key for its content
rather than reading the key themselves.

- ``telemetry:events`` (``STREAM``): the event stream; ``telemetry:dead_letter``: what the
  fast-path consumer could not store; ``blueplane-fast-path``: its consumer group.
- ``blueplane:watermarks:<db>``: a database's per-layout watermarks (hash; the publisher).
- ``blueplane:dedup:<workspace_hash>:<item id>``: one published item (TTL = dedup window).
- ``blueplane:rev:<db>:<layout>:<item>``: the last ``[hash, revision]`` sent for one item.
- ``blueplane:attribution:<db>`` / ``blueplane:parked:<db>``: the global database's learned
  composer → workspace map and the composers read before they could be attributed.
- ``blueplane:sessions`` (hash), ``…:sessions:last_id``, ``…:sessions:activity``: the
  session monitor's active sessions, stream position and per-workspace last activity.
- ``blueplane:lock:<home digest>``: the single-instance lock of one ``BLUEPLANE_HOME``.
- ``blueplane:spooled:<event_id>``: a spooled hook event already replayed (TTL 7 days).

``<db>`` is ``database_key(path)``: the first 16 hex digits of the SHA-256 of the path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

KEY_PREFIX = "blueplane:"

# Streams and the consumer group (defaults of the config; the config may rename them).
STREAM = "telemetry:events"
DEAD_LETTER_STREAM = "telemetry:dead_letter"
FAST_PATH_GROUP = "blueplane-fast-path"
# The OTLP exporter's own consumer group: it acknowledges a turn once the collector took it.
OTLP_GROUP = "blueplane-otlp"

# The session monitor's keys.
SESSIONS_KEY = f"{KEY_PREFIX}sessions"
# Every stream entry up to this id has been examined (the stream trimmer relies on it).
POSITION_KEY = f"{KEY_PREFIX}sessions:last_id"
# workspace_hash -> "<epoch seconds> <what>": the workspace's last activity, for expiry.
ACTIVITY_KEY = f"{KEY_PREFIX}sessions:activity"


# A replayed spool file is remembered this long (a crash between replay and delete).
SPOOLED_TTL_S = 7 * 86400


def spooled_key(event_id: str) -> str:
    """Set, with the XADD, when a spooled hook event is replayed: never twice."""
    return f"{KEY_PREFIX}spooled:{event_id}"


def database_key(path: str) -> str:
    """A short stable name of a database file, used inside its keys."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def watermark_key(db_path: str) -> str:
    return f"{KEY_PREFIX}watermarks:{database_key(db_path)}"


def dedup_key(workspace_hash: str, dedup_id: str) -> str:
    return f"{KEY_PREFIX}dedup:{workspace_hash}:{dedup_id}"


def revision_key(db_path: str, layout: str, item: str) -> str:
    """Where the last ``[hash, revision]`` sent for one item of a database's layout is kept."""
    return f"{KEY_PREFIX}rev:{database_key(db_path)}:{layout}:{item}"


def attribution_key(db_path: str) -> str:
    return f"{KEY_PREFIX}attribution:{database_key(db_path)}"


def parked_key(db_path: str) -> str:
    return f"{KEY_PREFIX}parked:{database_key(db_path)}"


def lock_key(home: Path) -> str:
    """The single-instance lock of one ``BLUEPLANE_HOME`` (resolved, so aliases share it)."""
    digest = hashlib.sha256(str(home.expanduser().resolve()).encode("utf-8")).hexdigest()
    return f"{KEY_PREFIX}lock:{digest[:16]}"
