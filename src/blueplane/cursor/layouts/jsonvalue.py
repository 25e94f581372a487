"""Decoding Cursor's JSON values, which may be TEXT or BLOB, NULL, or simply broken."""

from __future__ import annotations

import json
from typing import Any

import orjson


class BadValue(ValueError):
    """A value that is not the JSON we expect; the message says what is wrong."""


def load_json(key: str, raw: object) -> Any:
    """Parse a stored value; raise BadValue naming the key and the cause."""
    if raw is None:
        raise BadValue(f"{key} is NULL")
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadValue(f"{key} is a BLOB that is not UTF-8 text") from exc
    if not isinstance(raw, str):
        raise BadValue(f"{key} holds a {type(raw).__name__}, not JSON text")
    try:
        # orjson: 3-4x the standard library's speed (a first sync parses every value). What
        # only the standard library reads (NaN, an integer over 64 bits, a lone surrogate)
        # is read by it, as before, and so is the message of what neither reads.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadValue(f"{key} is not valid JSON ({exc.msg} at char {exc.pos})") from exc


def as_int(value: object) -> int | None:
    """An integer field, tolerating floats and numeric strings; None when absent or bogus."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:  # not NaN
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value != "" else None
