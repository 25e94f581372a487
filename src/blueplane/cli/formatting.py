"""How the commands show things to people: sizes, component lines, trace cells."""

from __future__ import annotations

from typing import Any

from rich import filesize


def size(n: int | None) -> str:
    """A byte count for a table (``-`` when unknown), in SI units as ``ls -h --si`` shows."""
    return "-" if n is None else filesize.decimal(n)


def component_line(name: str, comp: dict[str, Any]) -> str:
    """``name: status (counters) — last error: ...`` of one component of the status file."""
    counters = ", ".join(f"{k} {v}" for k, v in comp.get("counters", {}).items())
    line = f"{name}: {comp.get('status')}" + (f" ({counters})" if counters else "")
    if comp.get("last_error"):
        line += f" — last error: {comp['last_error']}"
    return line


def trace_cells(r: dict[str, Any]) -> list[str]:
    """The cells of one stored trace in the ``traces`` table."""
    p = r["payload"]
    kind = p.get("role") or p.get("generation_type") or p.get("record") or ""
    tokens = ""
    if p.get("input_tokens") is not None or p.get("output_tokens") is not None:
        tokens = f"{p.get('input_tokens', '-')} in / {p.get('output_tokens', '-')} out"
    text = p.get("text") or p.get("description") or p.get("name") or p.get("prompt_text") or ""
    if not text and p.get("text_length"):
        text = f"({p['text_length']} chars, content not captured)"
    rev = f" r{r['revision']}" if r.get("revision") else ""
    return [
        r["timestamp"] or "", (r["trace_type"] or "") + rev, r["workspace_hash"] or "",
        r["session_id"] or "", r["generation_id"] or "", str(kind),
        p.get("model") or p.get("model_name") or "", tokens, " ".join(str(text).split())[:120],
    ]  # fmt: skip
