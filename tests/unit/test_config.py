"""Settings: the proposal's keys and defaults, YAML + environment, clear errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic_settings import YamlConfigSettingsSource

from blueplane.config import ConfigError, Settings, _yaml_file, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("BLUEPLANE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_proposals() -> None:
    m = load_settings().cursor_database_monitor
    assert (m.enabled, m.poll_interval_seconds, m.sync_window_hours, m.query_timeout_seconds) == (
        True, 30.0, 24.0, 1.5,
    )  # fmt: skip
    assert (m.max_retries, m.retry_backoff_seconds, m.dedup_window_hours) == (3, 2.0, 24.0)
    assert m.max_concurrent_workspaces == 10
    assert m.capture_content is True and m.include_unattributed is False


def test_yaml_file_then_environment_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text(
        "cursor_database_monitor:\n  poll_interval_seconds: 0.25\n  sync_window_hours: 1.5\n"
        "redis:\n  url: redis://127.0.0.1:6390/2\n"
    )
    s = load_settings(cfg)
    assert s.cursor_database_monitor.poll_interval_seconds == 0.25  # fractional seconds
    assert s.cursor_database_monitor.sync_window_hours == 1.5
    assert s.redis_url == "redis://127.0.0.1:6390/2" and s.redis_url_explicit
    monkeypatch.setenv("BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS", "5")
    monkeypatch.setenv("BLUEPLANE_REDIS_URL", "redis://127.0.0.1:6391/0")
    monkeypatch.setenv("BLUEPLANE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("BLUEPLANE_CURSOR_DIRS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    s = load_settings(cfg)
    assert s.cursor_database_monitor.poll_interval_seconds == 5.0
    assert s.cursor_database_monitor.sync_window_hours == 1.5
    assert s.redis_url == "redis://127.0.0.1:6391/0"
    assert s.home == tmp_path / "h"
    assert s.cursor_dirs == [tmp_path / "a", tmp_path / "b"]
    assert s.store_path == tmp_path / "h" / "telemetry.db"


def test_config_from_env_variable_and_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "blueplane.yaml").write_text("cursor_database_monitor: {max_retries: 7}")
    assert load_settings().cursor_database_monitor.max_retries == 7
    other = tmp_path / "other.yaml"
    other.write_text("cursor_database_monitor: {max_retries: 1}")
    monkeypatch.setenv("BLUEPLANE_CONFIG", str(other))
    assert load_settings().cursor_database_monitor.max_retries == 1


def test_no_redis_url_named_means_default_or_bundled() -> None:
    s = load_settings()
    assert not s.redis_url_explicit
    assert s.redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cursor_database_monitor:\n  max_retries: lots\n", "cursor_database_monitor.max_retries"),
        ("cursor_database_monitor:\n  poll_interval_seconds: -1\n", "poll_interval_seconds"),
        ("cursor_database_monitor:\n  pol_interval_seconds: 3\n", "pol_interval_seconds"),
        ("redis: [1, 2]\n", "redis"),
        ("fast_path:\n  block_ms: 20000\n", "fast_path.block_ms"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value) and str(cfg) in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("a: 1\nb: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        (lambda p: None, "cannot be read: no such file"),
        (lambda p: p.mkdir(), "cannot be read: not a file"),
        (lambda p: p.write_text("- a\n- b\n"), "top level must be a mapping"),
        (lambda p: p.write_text("just words\n"), "top level must be a mapping"),
    ],
)
def test_unusable_file_is_one_error_naming_file_and_cause(
    tmp_path: Path, setup: Callable[[Path], object], cause: str
) -> None:
    # The library source skips a missing file and chokes on a non-mapping one; neither may pass.
    cfg = tmp_path / "named.yaml"
    setup(cfg)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert str(cfg) in str(info.value) and cause in str(info.value)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("# nothing set yet\n")
    assert load_settings(cfg).model_dump() == load_settings().model_dump()


def test_file_is_read_by_the_library_yaml_source(tmp_path: Path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text("fast_path: {batch_size: 7}\n")
    s = load_settings(cfg)
    assert s.fast_path.batch_size == 7 and s.config_file == cfg
    token = _yaml_file.set(cfg)
    try:
        built = Settings.settings_customise_sources(Settings, *([None] * 4))
    finally:
        _yaml_file.reset(token)
    assert any(isinstance(src, YamlConfigSettingsSource) for src in built)
    assert Settings().fast_path.batch_size == 2000  # no file outside load_settings


def test_cli_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cursor_database_monitor:\n  max_retries: lots\n")
    proc = subprocess.run(
        [sys.executable, "-m", "blueplane.cli", "run", "--config", str(cfg)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "max_retries" in lines[0], proc.stderr


def test_example_config_is_valid_and_holds_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "blueplane.example.yaml"
    assert load_settings(example).model_dump() == load_settings().model_dump()
