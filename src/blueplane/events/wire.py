"""A trace payload built as its JSON fields: the first sync's bulk path, without a model per item.

A first sync builds tens of thousands of payloads. As pydantic models, each cost a
construction, a copy to set its revision and two serialisations (its content hash, then the
stream entry): most of the Python time per published item. ``WirePayload`` holds instead the
fields exactly as ``model_dump(mode="json", exclude_none=True)`` of its model gives them, in the
model's field order, and is serialised once with orjson (once more with its revision). Its JSON
is byte for byte the model's ``model_dump_json(exclude_none=True)``: orjson and pydantic format
strings and floats alike (tests check it on every code point and on random floats); what orjson
does not encode (an integer over 64 bits, a lone surrogate) goes through the model, as before.

The pydantic models stay the contract: ``model()`` validates a ``WirePayload`` against its
model, and the tests check that the fields are the model's own JSON form.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import orjson
from pydantic_core import PydanticSerializationError

from blueplane.events.payloads import TracePayload

# The fields before ``revision`` in every payload model (``TracePayload``'s first three).
_BEFORE_REVISION = ("trace_type", "generation_id", "item_id")


class WirePayload:
    """A payload's JSON fields (``None`` left out) in its model's order; see the module doc."""

    __slots__ = ("_hashed", "_text", "fields", "model_cls")

    def __init__(self, model_cls: type[TracePayload], fields: dict[str, Any]) -> None:
        self.model_cls = model_cls
        self.fields = fields
        self._text: str | None = None  # the stream's JSON, made once
        self._hashed: bytes | None = None  # the JSON without ``revision`` (the content hash's)

    # What the pipeline reads of a payload (as of a ``TracePayload``).
    @property
    def trace_type(self) -> str:
        return str(self.fields["trace_type"])

    @property
    def generation_id(self) -> str:
        return str(self.fields["generation_id"])

    @property
    def item_id(self) -> str | None:
        return self.fields.get("item_id")

    @property
    def revision(self) -> int | None:
        return self.fields.get("revision")

    @property
    def composer_id(self) -> str | None:
        return self.fields.get("composer_id")

    def __getattr__(self, name: str) -> Any:
        """Any other field of the model, as the model would give it (``None`` when absent)."""
        if name in _field_order(self.model_cls):
            return self.fields.get(name)
        raise AttributeError(f"{self.model_cls.__name__} has no field {name!r}")

    def item_key(self) -> str:
        return self.fields.get("item_id") or self.fields["generation_id"]

    def to_json_dict(self) -> dict[str, Any]:
        return dict(self.fields)

    def model(self) -> TracePayload:
        """The contract's model of this payload (validated)."""
        return self.model_cls.model_validate(self.fields)

    def with_revision(self, revision: int) -> WirePayload:
        """A copy with ``revision`` set, in its place among the fields."""
        fields = self.fields
        if "revision" in fields:
            fields = {k: v for k, v in fields.items() if k != "revision"}
        out: dict[str, Any] = {k: fields[k] for k in _BEFORE_REVISION if k in fields}
        out["revision"] = revision
        out.update(fields)  # the keys already there keep their place
        copy = WirePayload(self.model_cls, out)
        copy._hashed = self._hashed  # the same content
        return copy

    def replace(self, **changes: Any) -> WirePayload:
        """A copy with ``changes`` (``None`` removes a field), in the model's field order."""
        order = _field_order(self.model_cls)
        fields = self.fields
        if len(changes) == 1 and fields:
            ((name, value),) = changes.items()
            if value is not None and order[name] > order[next(reversed(fields))]:
                out = fields.copy()  # a field after every present one (e.g. settled_by)
                out[name] = value
                return WirePayload(self.model_cls, out)
        merged = {**fields, **changes}
        out = {k: merged[k] for k in order if merged.get(k) is not None}
        return WirePayload(self.model_cls, out)

    def hashed_json(self) -> bytes:
        """The JSON that the content hash covers: the payload without ``revision``."""
        if self._hashed is None:
            fields = self.fields
            if "revision" in fields:
                fields = {k: v for k, v in fields.items() if k != "revision"}
            self._hashed = _dumps(fields, self.model_cls)
        return self._hashed

    def json_text(self) -> str:
        """The payload's JSON on the stream (``model_dump_json(exclude_none=True)``'s text)."""
        if self._text is None:
            self._text = _dumps(self.fields, self.model_cls).decode("utf-8")
        return self._text


@functools.cache
def _field_order(model_cls: type[TracePayload]) -> dict[str, int]:
    return {name: i for i, name in enumerate(model_cls.model_fields)}


def _dumps(fields: dict[str, Any], model_cls: type[TracePayload]) -> bytes:
    """orjson's JSON; what it does not encode goes through the model, as before this path."""
    try:
        return orjson.dumps(fields)
    except TypeError:  # orjson.JSONEncodeError: an integer over 64 bits, a lone surrogate
        return model_json(model_cls.model_validate(fields)).encode("utf-8")


def model_json(model: TracePayload, exclude: set[str] | None = None) -> str:
    """A model's compact JSON without ``None`` fields; text pydantic cannot encode (a lone
    surrogate from a broken file or path) is escaped instead of failing."""
    try:
        return model.model_dump_json(exclude_none=True, exclude=exclude)
    except PydanticSerializationError:
        data = model.model_dump(mode="json", exclude_none=True, exclude=exclude)
        return json.dumps(data, separators=(",", ":"))
