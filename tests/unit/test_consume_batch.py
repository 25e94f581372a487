"""``blueplane consume`` batches 5,000 entries unless the configuration says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from blueplane.config import load_settings
from blueplane.consume import CONSUME_BATCH_SIZE, consume_fast_path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BLUEPLANE_FAST_PATH__BATCH_SIZE", raising=False)
    monkeypatch.setenv("BLUEPLANE_HOME", str(tmp_path / "home"))


def test_consume_defaults_to_its_larger_batch_and_run_keeps_its_own(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fast_path: {consumer: central-1}\n")
    s = load_settings(cfg)
    fp = consume_fast_path(s)
    assert CONSUME_BATCH_SIZE == 5000
    assert fp.batch_size == 5000 and fp.consumer == "central-1"
    assert s.fast_path.batch_size == 2000  # ``run``'s fast path is unchanged


def test_a_configured_batch_size_wins_file_or_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fast_path: {batch_size: 2000}\n")
    assert consume_fast_path(load_settings(cfg)).batch_size == 2000
    monkeypatch.setenv("BLUEPLANE_FAST_PATH__BATCH_SIZE", "300")
    assert consume_fast_path(load_settings()).batch_size == 300
