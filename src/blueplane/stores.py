"""Which store a URL names, and opening it: ``sqlite:///path`` (default) or ``postgresql://…``.

The PostgreSQL driver is imported only when a PostgreSQL store is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from blueplane.config import STORE_SCHEMES, Settings
from blueplane.health import Health
from blueplane.store import TraceStore
from blueplane.store_schema import StoreUrlError
from blueplane.urls import describe_pg, mask_url

log = logging.getLogger("blueplane.store")


def store_kind(url: str) -> str:
    """``"sqlite"`` or ``"postgres"``; ``StoreUrlError`` for anything else."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in STORE_SCHEMES:
        raise StoreUrlError(f"unknown store URL scheme {scheme or '(none)'!r} in {mask_url(url)}")
    return "sqlite" if scheme == "sqlite" else "postgres"


def sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite://") :]).expanduser()


def open_store(url: str, *, readonly: bool = False) -> TraceStore:
    """The store ``url`` names, schema migrated (or checked, when ``readonly``).

    Raises ``StoreSchemaTooNew``, ``StoreAuthError``, and the driver's errors when the
    database cannot be reached.
    """
    if store_kind(url) == "sqlite":
        return TraceStore(sqlite_path(url), readonly=readonly)
    from blueplane.store_pg import PgTraceStore

    return PgTraceStore(url, readonly=readonly)


def store_exists(settings: Settings) -> bool:
    """False only for a SQLite store whose file is not there yet (nothing captured)."""
    url = settings.store_url
    return store_kind(url) != "sqlite" or sqlite_path(url).exists()


async def open_store_retrying(
    url: str,
    stop: asyncio.Event,
    backoff_s: float = 1.0,
    cap_s: float = 30.0,
    on_retry: Callable[[], None] | None = None,
) -> TraceStore | None:
    """Open the store, waiting for a database that does not answer yet (one log line per
    outage, naming the host, never the password); None if ``stop`` comes first.

    Credentials refused and a schema too new are raised at once: retrying cannot fix them.
    """
    from blueplane.aio import Backoff, sleep_or_stop

    delay = Backoff(backoff_s, cap_s)
    warned = False
    while not stop.is_set():
        try:
            store = await asyncio.to_thread(open_store, url)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            if on_retry is not None:
                on_retry()
            if not warned:
                where = describe_pg(url) if store_kind(url) == "postgres" else mask_url(url)
                log.error(
                    "store: PostgreSQL at %s does not answer (%s); retrying with backoff",
                    where, _one_line(exc),
                )  # fmt: skip
                warned = True
            await sleep_or_stop(stop, delay.next())
            continue
        if warned:
            log.info("store %s answers again", store.label)
        return store
    return None


async def open_store_showing(
    url: str,
    stop: asyncio.Event,
    health: Health,
    write_status: Callable[[], None],
    every_s: float,
) -> TraceStore | None:
    """``open_store_retrying``, with the wait shown in ``status`` (component ``store``:
    ``unavailable`` and its ``connect_attempts``) for ``run`` and ``consume`` alike."""
    comp = health.component("store")
    opener = asyncio.create_task(
        open_store_retrying(url, stop, on_retry=lambda: comp.count("connect_attempts"))
    )
    while not opener.done():
        await asyncio.wait({opener}, timeout=every_s)
        if not opener.done():
            comp.fail("unavailable", f"store {mask_url(url)} does not answer; retrying")
            write_status()
    store = opener.result()
    if store is not None:
        comp.status, comp.last_error = "ok", None
        health.server["store"] = store.label
    return store


class StoreAuthError(RuntimeError):
    """The database refused the credentials: retrying will not help."""


def open_errors() -> tuple[type[BaseException], ...]:
    """What opening a store raises when it cannot be used (shown as one line)."""
    import sqlite3

    import psycopg

    from blueplane.store_schema import StoreSchemaTooNew

    return (sqlite3.Error, OSError, psycopg.Error, StoreSchemaTooNew, StoreAuthError)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, StoreAuthError):
        return False
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
