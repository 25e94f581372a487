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
        # Dedup keys and watermarks must never be evicted.
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # A second server of the same home uses it instead of starting another on its files.
        assert await broker.resolve_server_url(settings) == (url, None)
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

    from blueplane.fast_path.consumer import count_after as _count_after

    client = aioredis.Redis.from_url(redis_url)
    ids = [await client.xadd("s", {"n": str(i)}) for i in range(5)]
    assert await _count_after(client, "s", ids[1]) == 3
    assert await _count_after(client, "s", "0-0") == 5
    assert await _count_after(client, "s", ids[-1]) == 0
    await client.aclose()


def test_redis_version_comparison() -> None:
    assert broker.parse_version("7.0.15") == (7, 0, 15)
    assert broker.parse_version("7.2.4-rc1") == (7, 2, 4)
    assert broker.parse_version("garbage") == ()
    assert broker.version_supported("6.2.0")
    assert broker.version_supported("6.2.14")
    assert broker.version_supported("7.0.15")
    assert broker.version_supported("10.0")
    assert not broker.version_supported("6.0.20")
    assert not broker.version_supported("5.0.14")
    assert not broker.version_supported("6")
    assert not broker.version_supported("unknown")


async def test_real_redis_passes_the_start_checks(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        facts = await broker.redis_facts(client)
    finally:
        await client.aclose()
    assert broker.version_supported(facts.version)
    assert facts.maxmemory_policy == "noeviction"  # the test server is the bundled config
    assert facts.eviction_warning is None


def test_eviction_warning_names_the_policy() -> None:
    facts = broker.RedisFacts("7.0.15", "allkeys-lru")
    assert facts.eviction_warning is not None
    assert "allkeys-lru" in facts.eviction_warning
    assert "unknown" in (broker.RedisFacts("7.0.15", "unknown").eviction_warning or "")


def test_sizes_are_shown_in_si_units():
    from blueplane.cli.formatting import size

    assert [size(None), size(0), size(999), size(123_456), size(5 * 10**9)] == [
        "-", "0 bytes", "999 bytes", "123.5 kB", "5.0 GB",
    ]  # fmt: skip
