"""The feature flag flipped at run time (file change and SIGHUP) while Cursor keeps writing.

``blueplane run`` against a real Redis and a real workspace database written by a thread:
nothing is published while the workspace is off, and once it is on again every generation
written meanwhile arrives exactly once (the watermarks only advance on publication).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from blueplane.events import normalise_workspace_path, workspace_hash
from tests.conftest import BlueplaneEnv, wait_until
from tests.fixtures.cursor_db import CursorDb, UserDir, make_generation, now_ms

pytestmark = pytest.mark.integration

ON = "feature_flags:\n  python_db_monitor_enabled: true \n"
OFF = "feature_flags:\n  python_db_monitor_enabled: false\n"
assert len(ON) == len(OFF)


class Writer(threading.Thread):
    """Cursor's side: one generation per commit, every ``interval`` seconds, until stopped."""

    def __init__(self, path: Path, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.db = CursorDb(path, generations_cap=1000)
        self.interval = interval
        self.ids: list[str] = []
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                gen = make_generation(now_ms(), "composer", f"generation {len(self.ids) + 1}")
                self.db.append_generations([gen])
                self.ids.append(gen["generationUUID"])
        except (sqlite3.Error, OSError) as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.db.close()


def _stream_ids(client: sync_redis.Redis) -> list[str]:
    out = []
    for _id, fields in client.xrange("telemetry:events"):
        if fields.get("event_type") != "database_trace":
            continue
        payload = json.loads(fields["payload"])
        if payload.get("trace_type") == "generation":
            out.append(payload["generation_id"])
    return out


def _workspace(env: BlueplaneEnv, h: str) -> dict[str, Any]:
    try:
        status = json.loads((env.home / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return status.get("workspaces", {}).get(h, {})


def _component(env: BlueplaneEnv, name: str) -> dict[str, Any]:
    try:
        status = json.loads((env.home / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return status.get("components", {}).get(name, {})


def _same_signature_write(path: Path, text: str) -> None:
    """New content, same inode, size and mtime: invisible to the file watch, so only SIGHUP
    can make the server see it."""
    st = path.stat()
    with path.open("r+") as fh:
        fh.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_flag_off_and_on_at_runtime_loses_nothing_and_sends_nothing_twice(
    bp_env: BlueplaneEnv, server, redis_client: sync_redis.Redis, tmp_path: Path
) -> None:
    cfg = tmp_path / "blueplane.yaml"
    cfg.write_text(ON)
    bp_env.extra["BLUEPLANE_CONFIG"] = str(cfg)
    folder = tmp_path / "projects" / "demo"
    folder.mkdir(parents=True)
    ws = UserDir(bp_env.cursor_dirs[0]).add_workspace(str(folder))
    ws.db.close()
    sp = server()
    bp_env.cli("session", "start", "--workspace", str(folder), "--session-id", "s-1")
    h = workspace_hash(normalise_workspace_path(str(folder)))
    writer = Writer(ws.db.path)
    writer.start()
    try:
        wait_until(lambda: len(writer.ids) >= 3 and set(writer.ids[:3]) <= set(_stream_ids(
            redis_client)), what="generations published while on")  # fmt: skip
        wait_until(
            lambda: _workspace(bp_env, h).get("rollout", {}).get("enabled") is True,
            what="status to show the workspace in the rollout",
        )

        for turn_off, turn_on in (("file", "sighup"), ("sighup", "file")):
            # ---- off
            if turn_off == "file":
                _replace(cfg, OFF)
            else:
                _same_signature_write(cfg, OFF)
                sp.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: (
                    _workspace(bp_env, h).get("rollout") == {"enabled": False, "reason": "flag off"}
                ),
                what=f"the workspace off ({turn_off})",
            )
            # The monitor has looked at the database since (so no read from before is still
            # publishing): its last check is after a write made once it was off.
            mark = len(writer.ids)
            wait_until(lambda m=mark: len(writer.ids) >= m + 1, what="a write while off")
            first_off_write = writer.ids[mark]
            seen = Counter(_stream_ids(redis_client))
            checked = _workspace(bp_env, h).get("last_check")
            wait_until(
                lambda c=checked: (
                    _workspace(bp_env, h).get("last_check") != c
                    and _workspace(bp_env, h).get("status") == "rollout_off"
                ),
                what="the monitor to look at the database while off",
            )
            published_at_off = Counter(_stream_ids(redis_client))
            # Writes go on; several are seen by the monitor, none is published.
            mark = len(writer.ids)
            wait_until(lambda m=mark: len(writer.ids) >= m + 5, what="5 writes while off")
            checked = _workspace(bp_env, h).get("last_check")
            wait_until(
                lambda c=checked: _workspace(bp_env, h).get("last_check") != c,
                what="the monitor to see the writes while off",
            )
            assert Counter(_stream_ids(redis_client)) == published_at_off
            assert first_off_write not in published_at_off
            assert sum(seen.values()) <= sum(published_at_off.values())
            off_ids = [i for i in writer.ids if i not in published_at_off]
            assert len(off_ids) >= 5

            # ---- on again: what was written meanwhile arrives, once
            if turn_on == "file":
                _replace(cfg, ON)
            else:
                _same_signature_write(cfg, ON)
                sp.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda ids=off_ids: set(ids) <= set(_stream_ids(redis_client)),
                what=f"generations written while off, after {turn_on}",
            )
            wait_until(
                lambda: _workspace(bp_env, h).get("rollout", {}).get("enabled") is True,
                what="status to show the workspace on again",
            )
    finally:
        writer.stopped.set()
        writer.join(10)
    assert writer.error is None, writer.error
    wait_until(lambda: set(writer.ids) <= set(_stream_ids(redis_client)), what="every generation")
    counts = Counter(_stream_ids(redis_client))
    assert counts == Counter(writer.ids), "each generation exactly once on the stream"
    wait_until(lambda: len(bp_env.traces()) == len(writer.ids), what="all in the store")
    stored = Counter(t["generation_id"] for t in bp_env.traces())
    assert stored == Counter(writer.ids)
    assert all(t["sources"] == ["python_monitor"] for t in bp_env.traces())
    log = sp.log()
    assert "feature flags reloaded" in log and "SIGHUP: rereading the config" in log


def test_server_warns_about_unknown_entries_and_keeps_its_config_on_a_bad_reload(
    bp_env: BlueplaneEnv, server, tmp_path: Path
) -> None:
    cfg = tmp_path / "blueplane.yaml"
    cfg.write_text("feature_flags:\n  python_db_monitor_exclude: ['/no/such/folder']\n")
    bp_env.extra["BLUEPLANE_CONFIG"] = str(cfg)
    sp = server()
    warning = "feature_flags.python_db_monitor_exclude: '/no/such/folder' names no known workspace"
    wait_until(lambda: warning in sp.log(), what="the warning naming the key")
    status = bp_env.cli_json("status")
    assert any(warning in w for w in status["server"].get("warnings", []))

    _replace(cfg, "feature_flags:\n  python_db_monitor_rollout_percent: 150\n")
    wait_until(lambda: "config reload rejected" in sp.log(), what="the rejected reload")
    lines = [ln for ln in sp.log().splitlines() if "config reload rejected" in ln]
    assert len(lines) == 1
    assert "python_db_monitor_rollout_percent" in lines[0] and "stays in force" in lines[0]
    # (`blueplane status` itself refuses the bad file; the server's status file says it)
    wait_until(
        lambda: _component(bp_env, "config").get("status") == "invalid",
        what="status to show the config invalid",
    )
    assert sp.proc is not None and sp.proc.poll() is None  # still running, old config
    sp.proc.send_signal(signal.SIGHUP)  # the same bad file again: one more line, still running
    wait_until(
        lambda: sum("config reload rejected" in ln for ln in sp.log().splitlines()) == 2,
        what="the second rejection",
    )
    assert sp.proc.poll() is None
