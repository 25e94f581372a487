"""Timestamps as the events carry them: ISO 8601 UTC with milliseconds and a ``Z``.

A first sync formats and parses one or two timestamps per item, and ``datetime`` costs a few
microseconds each. The common forms take a short path instead (the date and time of a whole
second, cached, plus its milliseconds) that gives exactly what the ``datetime`` path gives,
float rounding included; the tests compare the two on random times.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Whole seconds formatted or parsed lately (a first sync's items share their seconds).
_SECONDS_CACHE_MAX = 4096
_iso_seconds: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS"
_epoch_seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch second
# The short path's range (1970-2100): there it equals the ``datetime`` path exactly (tested);
# far later, that path's float division loses a millisecond now and then.
_MAX_MS = 4_102_444_800_000


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_ms(ms: int | float) -> str:
    if type(ms) is int and 0 <= ms < _MAX_MS:
        seconds, millis = divmod(ms, 1000)
        head = _iso_seconds.get(seconds)
        if head is None:
            head = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")[:19]
            if len(_iso_seconds) >= _SECONDS_CACHE_MAX:
                _iso_seconds.clear()
            _iso_seconds[seconds] = head
        return f"{head}.{millis:03d}Z"
    return _iso_from_ms(ms)


def _iso_from_ms(ms: int | float) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp (``Z`` or an offset)."""
    # Cursor's own form, "YYYY-MM-DDTHH:MM:SS.mmmZ": the second's epoch from a cache.
    millis = text[20:23]
    if (
        len(text) == 24
        and text[19] == "."
        and text[23] == "Z"
        and millis.isascii()
        and millis.isdigit()
    ):
        head = text[:19]
        seconds = _epoch_seconds.get(head)
        if seconds is None:
            seconds = _parse_iso_ms(head + "Z") // 1000
            if len(_epoch_seconds) >= _SECONDS_CACHE_MAX:
                _epoch_seconds.clear()
            _epoch_seconds[head] = seconds
        # As ``_parse_iso_ms`` computes it: the timestamp (µs / 10**6, a float) times 1000.
        return int((seconds * 1_000_000 + int(millis) * 1000) / 10**6 * 1000)
    return _parse_iso_ms(text)


def _parse_iso_ms(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
