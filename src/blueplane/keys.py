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

Producer-private keys are named from paths only, so two machines with identical paths
publishing to one team Redis would share them (one machine's watermark or dedup key makes the
other skip items). :class:`Keys` builds them under an optional per-install namespace
(``redis.key_namespace``): ``blueplane:<ns>:watermarks:…`` and so on. The empty namespace
(the default) gives exactly the historic names below. Streams and consumer groups stay global.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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


# A namespace is a Redis key segment: no ':' (it would look like another key level), no spaces.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# ``redis.key_namespace: machine`` means this install's machine_id.
MACHINE_NAMESPACE = "machine"


class InvalidNamespace(ValueError):
    """A key namespace outside the safe charset."""


def check_namespace(namespace: str) -> str:
    """The namespace itself if it is empty or safe; InvalidNamespace says why not."""
    if namespace and not NAMESPACE_RE.match(namespace):
        raise InvalidNamespace(
            f"key namespace {namespace!r}: use 1-64 characters of A-Z a-z 0-9 _ . - "
            "(starting with a letter or digit)"
        )
    return namespace


@dataclass(frozen=True)
class Keys:
    """The producer-private key names of one install (built once by the server, passed on).

    ``Keys()`` (empty namespace) gives exactly the module-level names, so single-machine
    installs keep their existing keys.
    """

    namespace: str = ""

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}{self.namespace}:" if self.namespace else KEY_PREFIX

    @property
    def sessions(self) -> str:
        return f"{self.prefix}sessions"

    @property
    def position(self) -> str:
        return f"{self.prefix}sessions:last_id"

    @property
    def activity(self) -> str:
        return f"{self.prefix}sessions:activity"

    def spooled(self, event_id: str) -> str:
        return f"{self.prefix}spooled:{event_id}"

    def watermark(self, db_path: str) -> str:
        return f"{self.prefix}watermarks:{database_key(db_path)}"

    def dedup(self, workspace_hash: str, dedup_id: str) -> str:
        return f"{self.prefix}dedup:{workspace_hash}:{dedup_id}"

    def revision(self, db_path: str, layout: str, item: str) -> str:
        return f"{self.prefix}rev:{database_key(db_path)}:{layout}:{item}"

    def attribution(self, db_path: str) -> str:
        return f"{self.prefix}attribution:{database_key(db_path)}"

    def parked(self, db_path: str) -> str:
        return f"{self.prefix}parked:{database_key(db_path)}"

    def lock(self, home: Path) -> str:
        digest = hashlib.sha256(str(home.expanduser().resolve()).encode("utf-8")).hexdigest()
        return f"{self.prefix}lock:{digest[:16]}"


LEGACY = Keys()
