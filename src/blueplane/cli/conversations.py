"""``blueplane conversations`` and ``blueplane show ID``: reconciled conversations and turns."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from blueplane import conversations as conv
from blueplane.cli.common import JsonOpt, app, err, out, settings_or_exit
from blueplane.cli.traces import parse_since
from blueplane.store import TraceStore


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


@app.command("conversations")
def conversations_cmd(
    json_out: JsonOpt = False,
    workspace: Annotated[
        str | None, typer.Option(help="Only this workspace_hash (or a folder path).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Active since: 30m, 2h, 1d, or ISO 8601.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most N (the most recently active).")] = 50,
) -> None:
    """Conversations with their turns, models and token totals, most recent first."""
    s = settings_or_exit()
    since_ms = parse_since(since) if since else None
    rows: list[conv.Conversation] = []
    if s.store_path.exists():
        store = TraceStore(s.store_path, readonly=True)
        try:
            rows = conv.list_conversations(
                store, workspace=workspace, since_ms=since_ms, limit=limit
            )
        finally:
            store.close()
    if json_out:
        out.print_json(json.dumps([c.to_json() for c in rows]))
        return
    table = Table(title=f"Conversations ({len(rows)})")
    for col in ("last active", "conversation", "workspace", "title", "models", "turns",
                "in", "out", "cache r/w", "sources"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for c in rows:
        table.add_row(
            c.last_at or "", c.conversation_id, c.workspace_hash or "", (c.title or "")[:60],
            ", ".join(c.models), str(c.turns), _n(c.input_tokens), _n(c.output_tokens),
            f"{_n(c.cache_read_tokens)} / {_n(c.cache_write_tokens)}", ", ".join(c.sources),
        )  # fmt: skip
    out.print(table)


@app.command("show")
def show_cmd(
    conversation_id: Annotated[str, typer.Argument(help="The conversation (composer) id.")],
    json_out: JsonOpt = False,
) -> None:
    """One conversation, turn by turn: prompt, answer, model, tokens, duration, tools."""
    s = settings_or_exit()
    got = None
    if s.store_path.exists():
        store = TraceStore(s.store_path, readonly=True)
        try:
            got = conv.get_conversation(store, conversation_id)
        finally:
            store.close()
    if got is None:
        err.print(f"[red]error:[/red] no conversation {conversation_id} in the store",
                  highlight=False)  # fmt: skip
        raise typer.Exit(1)
    c, turns = got
    if json_out:
        out.print_json(json.dumps({**c.to_json(), "turns": [t.to_json() for t in turns]}))
        return
    out.print(f"[bold]{escape(c.title or c.conversation_id)}[/bold]", highlight=False)
    out.print(
        f"{c.conversation_id} · workspace {c.workspace_path or c.workspace_hash or '?'} · "
        f"{c.turns} turn(s) · tokens in {_n(c.input_tokens)} out {_n(c.output_tokens)} "
        f"cache read {_n(c.cache_read_tokens)} write {_n(c.cache_write_tokens)} · "
        f"sources {', '.join(c.sources)}",
        highlight=False,
    )
    for i, t in enumerate(turns, 1):
        dur = "-" if t.duration_ms is None else f"{t.duration_ms / 1000:.1f} s"
        out.rule(f"turn {i} · {t.model or 'model ?'} · {dur} · {', '.join(t.sources)}")
        out.print(
            f"tokens: in {_n(t.input_tokens)}, out {_n(t.output_tokens)}, cache read "
            f"{_n(t.cache_read_tokens)}, cache write {_n(t.cache_write_tokens)}",
            highlight=False,
        )
        if t.prompt:
            out.print(f"[bold]prompt:[/bold] {escape(t.prompt)}", highlight=False)
        if t.response:
            out.print(f"[bold]answer:[/bold] {escape(t.response)}", highlight=False)
        for tool in t.tools:
            ok = {True: "ok", False: "failed", None: "?"}[tool.ok]
            td = "-" if tool.duration_ms is None else f"{tool.duration_ms} ms"
            out.print(f"  tool {tool.name}: {ok}, {td}", highlight=False)
