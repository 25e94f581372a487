"""The migration's feature flag: deterministic bucketing, include/exclude, config and reload."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blueplane.config import ConfigError, FeatureFlagsConfig, load_settings
from blueplane.config_reloader import ConfigReloader
from blueplane.events import workspace_hash
from blueplane.health import Health
from blueplane.rollout import Rollout, bucket


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("BLUEPLANE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def _hashes(n: int) -> list[str]:
    return [hashlib.sha256(f"/home/dev/project-{i}".encode()).hexdigest()[:16] for i in range(n)]


def _expected_bucket(h: str) -> int:
    # Independent of the implementation: the first 4 bytes of the digest, big-endian.
    return int.from_bytes(hashlib.sha256(h.encode("ascii")).digest()[:4], "big") % 100


# Computed by hand once (python -c), so a change of the rule cannot pass unnoticed.
KNOWN = {"0000000000000000": 82, "ffffffffffffffff": 68, "a1b2c3d4e5f60718": 82}


def test_bucketing_matches_independent_expectations_for_300_hashes() -> None:
    hashes = _hashes(300)
    for h in hashes:
        assert bucket(h) == _expected_bucket(h)
    for h, b in KNOWN.items():
        assert bucket(h) == b
    # The rule spreads: every decile holds some of 300 workspaces.
    assert len({bucket(h) // 10 for h in hashes}) == 10
    for pct in (0, 10, 50, 100):
        r = Rollout(FeatureFlagsConfig(python_db_monitor_rollout_percent=pct))
        got = [h for h in hashes if r.enabled(h)]
        assert got == [h for h in hashes if _expected_bucket(h) < pct]
    r10 = Rollout(FeatureFlagsConfig(python_db_monitor_rollout_percent=10))
    assert 10 <= sum(r10.enabled(h) for h in hashes) <= 60  # ~10 % of 300


def test_bucketing_is_stable_across_a_restart() -> None:
    """A fresh interpreter (another hash seed) puts the same workspaces in the rollout."""
    hashes = _hashes(250)
    code = (
        "import json,sys\nfrom blueplane.rollout import Rollout\nfrom blueplane.config import "
        "FeatureFlagsConfig\nr=Rollout(FeatureFlagsConfig(python_db_monitor_rollout_percent=10))\n"
        "print(json.dumps([r.decide(h).reason for h in json.load(sys.stdin)]))"
    )
    reasons = []
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(hashes), capture_output=True,
            text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        reasons.append(json.loads(proc.stdout))
    here = Rollout(FeatureFlagsConfig(python_db_monitor_rollout_percent=10))
    assert reasons[0] == reasons[1] == [here.decide(h).reason for h in hashes]


def test_reasons_flag_off_excluded_included_and_bucket(tmp_path: Path) -> None:
    folder = str(tmp_path / "proj")
    h = workspace_hash(folder)
    out_h = next(x for x in _hashes(200) if bucket(x) >= 10)
    in_h = next(x for x in _hashes(200) if bucket(x) < 10)
    r = Rollout(FeatureFlagsConfig(python_db_monitor_rollout_percent=10))
    d = r.decide(out_h)
    assert not d.enabled and d.reason == f"not in rollout (bucket {bucket(out_h)} ≥ 10)"
    assert r.decide(in_h).to_json() == {
        "enabled": True,
        "reason": f"in rollout (bucket {bucket(in_h)} < 10)",
    }
    # include by folder path (matched by path and by the path's hash), exclude wins
    r.update(
        FeatureFlagsConfig(
            python_db_monitor_rollout_percent=0,
            python_db_monitor_include=[folder + "/", out_h],
            python_db_monitor_exclude=[out_h],
        )
    )
    assert r.decide(h).reason == "included"
    assert r.decide("ffffffffffffffff", folder).reason == "included"
    assert r.decide(out_h).reason == "excluded"
    r.update(FeatureFlagsConfig(python_db_monitor_enabled=False, python_db_monitor_include=[h]))
    assert r.decide(h).to_json() == {"enabled": False, "reason": "flag off"}


def test_unknown_include_exclude_entries_are_named_warnings(tmp_path: Path) -> None:
    folder = str(tmp_path / "known")
    r = Rollout(
        FeatureFlagsConfig(
            python_db_monitor_include=[folder, "0123456789abcdef"],
            python_db_monitor_exclude=["/nowhere/at/all"],
        )
    )
    warnings = r.unknown_entries([(workspace_hash(folder), folder)])
    assert len(warnings) == 2
    assert "feature_flags.python_db_monitor_include: '0123456789abcdef'" in warnings[0]
    assert "feature_flags.python_db_monitor_exclude: '/nowhere/at/all'" in warnings[1]


def test_flags_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().feature_flags == FeatureFlagsConfig()  # defaults
    cfg = tmp_path / "b.yaml"
    cfg.write_text(
        "feature_flags:\n  python_db_monitor_rollout_percent: 10\n"
        "  python_db_monitor_include: [aaaaaaaaaaaaaaaa]\n"
    )
    f = load_settings(cfg).feature_flags
    assert f.python_db_monitor_enabled is True and f.python_db_monitor_rollout_percent == 10
    assert f.python_db_monitor_include == ["aaaaaaaaaaaaaaaa"]
    monkeypatch.setenv("BLUEPLANE_FEATURE_FLAGS__PYTHON_DB_MONITOR_ENABLED", "false")
    monkeypatch.setenv("BLUEPLANE_FEATURE_FLAGS__PYTHON_DB_MONITOR_EXCLUDE", '["b", "/x/y"]')
    assert load_settings(cfg).feature_flags.python_db_monitor_exclude == ["b", "/x/y"]
    monkeypatch.setenv("BLUEPLANE_FEATURE_FLAGS__PYTHON_DB_MONITOR_EXCLUDE", "b, /x/y")
    f = load_settings(cfg).feature_flags
    assert f.python_db_monitor_enabled is False and f.python_db_monitor_exclude == ["b", "/x/y"]


@pytest.mark.parametrize("pct", ["101", "-1", "ten"])
def test_rollout_percent_outside_0_100_is_a_config_error_naming_the_key(
    tmp_path: Path, pct: str
) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"feature_flags:\n  python_db_monitor_rollout_percent: {pct}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    msg = str(info.value)
    assert "feature_flags.python_db_monitor_rollout_percent" in msg and "\n" not in msg


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # as editors save


async def _wait(predicate, what: str, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_file_change_applies_within_a_second_and_bad_config_keeps_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "blueplane.yaml"
    cfg.write_text("feature_flags:\n  python_db_monitor_rollout_percent: 100\n")
    settings = load_settings(cfg)
    rollout = Rollout(settings.feature_flags)
    health = Health()
    reloader = ConfigReloader(settings, rollout, health)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    try:
        await asyncio.wait_for(reloader.watching.wait(), 5)  # the watcher is up
        _write(cfg, "feature_flags:\n  python_db_monitor_rollout_percent: 10\n")
        took = await _wait(lambda: rollout.epoch == 1, "the new percent", 1.0)
        assert rollout.flags.python_db_monitor_rollout_percent == 10 and took < 1.0

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="blueplane.config_reloader"):
            _write(cfg, "feature_flags:\n  python_db_monitor_rollout_percent: 250\n")
            await _wait(lambda: reloader.failures == 1, "the rejected reload", 1.0)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "python_db_monitor_rollout_percent" in errors[0].getMessage()
        assert "previous config stays in force" in errors[0].getMessage()
        assert rollout.flags.python_db_monitor_rollout_percent == 10 and rollout.epoch == 1
        assert health.components["config"].status == "invalid"

        # SIGHUP's path: a request rereads even without a file event
        cfg.write_text("feature_flags:\n  python_db_monitor_enabled: false\n")
        reloader.request()
        await _wait(lambda: rollout.epoch == 2, "the reload on request", 1.0)
        assert rollout.decide("0000000000000000").reason == "flag off"
        assert health.components["config"].status == "ok"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_unknown_entries_warn_once_each_and_show_in_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = str(tmp_path / "known")
    cfg = tmp_path / "blueplane.yaml"
    cfg.write_text(f"feature_flags:\n  python_db_monitor_include: ['{folder}', '/typo/path']\n")
    settings = load_settings(cfg)
    health = Health()
    reloader = ConfigReloader(
        settings, Rollout(settings.feature_flags), health,
        known_workspaces=lambda: [(workspace_hash(folder), folder)],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="blueplane.config_reloader"):
        warnings = await reloader.warn_unknown_entries()
    assert warnings == [
        "feature_flags.python_db_monitor_include: '/typo/path' names no known workspace "
        "(neither a workspace hash nor a folder Cursor has opened)"
    ]
    assert [r.getMessage() for r in caplog.records] == warnings
    assert health.server["warnings"] == warnings
    cfg.write_text(f"feature_flags:\n  python_db_monitor_include: ['{folder}']\n")
    assert await reloader.reload()
    assert "warnings" not in health.server
