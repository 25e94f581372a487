"""The ``otlp:`` section and the standard OTEL_* variables decide whether turns are exported."""

from __future__ import annotations

import pytest

from blueplane.config import load_settings


def test_otlp_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert not load_settings().otlp.active()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().otlp.active()  # the standard variable alone turns it on
    monkeypatch.setenv("BLUEPLANE_OTLP__ENABLED", "false")
    assert not load_settings().otlp.active()  # an explicit "no" wins
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("BLUEPLANE_OTLP__ENABLED", "true")
    monkeypatch.setenv("BLUEPLANE_OTLP__HEADERS", '{"x-api-key": "k"}')
    s = load_settings()
    assert s.otlp.active() and s.otlp.headers == {"x-api-key": "k"}
    assert s.otlp.capture_content is False  # text stays home by default
