"""Stream entries are flat: dict and list values are JSON text, everything else plain text
(DESIGN.md §4). ``decode_fields`` is strict: what it cannot read is a ``MalformedEntry``."""

from __future__ import annotations

import json
from typing import Any


class MalformedEntry(ValueError):
    """A stream entry that cannot be understood; the message says why."""


_JSON_FIELDS = ("payload", "metadata")


def encode_fields(event: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in event.items():
        if isinstance(value, dict | list):
            out[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif value is None:
            continue
        else:
            out[key] = str(value)
    return out


def decode_fields(fields: dict[Any, Any]) -> dict[str, Any]:
    """Stream fields to a dict; ``payload``/``metadata`` parsed as JSON (strictly)."""
    out: dict[str, Any] = {}
    for raw_key, raw_value in fields.items():
        try:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = raw_value.decode() if isinstance(raw_value, bytes) else str(raw_value)
        except UnicodeDecodeError as exc:
            raise MalformedEntry(f"field is not UTF-8: {exc}") from exc
        if key in _JSON_FIELDS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise MalformedEntry(f"'{key}' is not valid JSON: {exc.msg} at {exc.pos}") from exc
        else:
            out[key] = value
    return out
