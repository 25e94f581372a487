"""redis.key_namespace: the default keeps today's key names exactly; a namespace moves every
producer-private key under ``blueplane:<ns>:`` and leaves the streams and groups global."""

from __future__ import annotations

from pathlib import Path

import pytest

from blueplane import keys
from blueplane.config import ConfigError, Settings
from blueplane.keys import InvalidNamespace, Keys
from blueplane.machine import machine_id

DB = "/home/dev/.config/Cursor/User/workspaceStorage/abc/state.vscdb"
DIGEST = keys.database_key(DB)


def test_the_default_namespace_builds_exactly_todays_key_names(tmp_path: Path) -> None:
    k = Keys()
    assert k.sessions == keys.SESSIONS_KEY == "blueplane:sessions"
    assert k.position == keys.POSITION_KEY == "blueplane:sessions:last_id"
    assert k.activity == keys.ACTIVITY_KEY == "blueplane:sessions:activity"
    assert k.watermark(DB) == keys.watermark_key(DB) == f"blueplane:watermarks:{DIGEST}"
    assert k.dedup("ws", "a1b2:0") == keys.dedup_key("ws", "a1b2:0") == "blueplane:dedup:ws:a1b2:0"
    assert k.revision(DB, "cd", "c:x") == keys.revision_key(DB, "cd", "c:x")
    assert k.revision(DB, "cd", "c:x") == f"blueplane:rev:{DIGEST}:cd:c:x"
    assert k.attribution(DB) == keys.attribution_key(DB) == f"blueplane:attribution:{DIGEST}"
    assert k.parked(DB) == keys.parked_key(DB) == f"blueplane:parked:{DIGEST}"
    assert k.spooled("e-1") == keys.spooled_key("e-1") == "blueplane:spooled:e-1"
    assert k.lock(tmp_path) == keys.lock_key(tmp_path)
    assert k.lock(tmp_path).startswith("blueplane:lock:")
    assert Settings(home=tmp_path).keys() == Keys()  # the config's default: no namespace


def test_a_namespace_prefixes_every_producer_private_key(tmp_path: Path) -> None:
    k = Keys("laptop-7")
    built = [
        k.sessions, k.position, k.activity, k.watermark(DB), k.dedup("ws", "d"),
        k.revision(DB, "cd", "i"), k.attribution(DB), k.parked(DB), k.spooled("e"),
        k.lock(tmp_path),
    ]  # fmt: skip
    assert all(name.startswith("blueplane:laptop-7:") for name in built)
    assert k.watermark(DB) == f"blueplane:laptop-7:watermarks:{DIGEST}"
    assert k.position == "blueplane:laptop-7:sessions:last_id"
    # the shared names stay global
    assert keys.STREAM == "telemetry:events" and keys.FAST_PATH_GROUP == "blueplane-fast-path"


def test_machine_means_this_installs_machine_id(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, redis={"key_namespace": "machine"})
    assert s.keys().namespace == machine_id(tmp_path)
    assert s.keys().watermark(DB) == f"blueplane:{machine_id(tmp_path)}:watermarks:{DIGEST}"


@pytest.mark.parametrize("bad", ["a:b", "has space", "-lead", "x" * 65, "ü", "a*"])
def test_an_unsafe_namespace_is_refused_with_the_reason(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidNamespace, match="key namespace"):
        Keys(bad)
    with pytest.raises((ValueError, ConfigError), match="key namespace"):
        Settings(home=tmp_path, redis={"key_namespace": bad})
