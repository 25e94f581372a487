"""CLI helpers, and the bundled Redis server used when none answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import typer

import blueplane.broker as broker
from blueplane.cli import parse_since
from blueplane.config import load_settings


def test_parse_since() -> None:
    now = 1_700_000_000.0
    assert parse_since("30m", now) == int((now - 1800) * 1000)
    assert parse_since("2h", now) == int((now - 7200) * 1000)
    assert parse_since("1d", now) == int((now - 86400) * 1000)
    assert parse_since("2025-11-26T18:00:00Z") == 1764180000000
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")


async def test_bundled_redis_starts_when_nothing_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLUEPLANE_REDIS_URL", raising=False)
    monkeypatch.setattr(broker, "DEFAULT_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing there
    settings = load_settings(home=tmp_path / "home")
    url, bundled = await broker.resolve_server_url(settings)
    assert bundled is not None
    try:
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.xadd("telemetry:events", {"a": "1"})
        assert (tmp_path / "home" / "redis" / "url").read_text() == url
        assert await broker.resolve_client_url(settings) == url  # the CLI finds it
        cfg = client.config_get("bind")["bind"]
        assert cfg.split()[0] == "127.0.0.1"  # loopback only
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.close()
    finally:
        bundled.stop()
    assert not (tmp_path / "home" / "redis" / "url").exists()
    assert list((tmp_path / "home" / "redis").glob("appendonly*"))  # its data stays on disk


async def test_named_url_is_used_even_if_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLUEPLANE_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = load_settings(home=tmp_path)
    assert await broker.resolve_server_url(settings) == ("redis://127.0.0.1:1/0", None)


async def test_consumer_lag_is_counted_where_redis_does_not_report_it(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from blueplane.cli import _count_after

    client = aioredis.Redis.from_url(redis_url)
    ids = [await client.xadd("s", {"n": str(i)}) for i in range(5)]
    assert await _count_after(client, "s", ids[1]) == 3
    assert await _count_after(client, "s", "0-0") == 5
    assert await _count_after(client, "s", ids[-1]) == 0
    await client.aclose()
