"""``blueplane dlq list|replay``: look at the dead-letter stream and retry what it holds."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.cli.common import app, err, out, settings_or_exit
from blueplane.config import Settings
from blueplane.fast_path.dead_letters import ReplayResult, iter_dead_letters, replay
from blueplane.urls import mask_url

dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Entries the consumer could not store (telemetry:dead_letter): list and replay them.",
)
app.add_typer(dlq_app, name="dlq")


async def _with_client(settings: Settings, work: Any) -> Any:
    url = await resolve_client_url(settings)
    client = make_client(url, settings.redis)
    try:
        return await work(client)
    except REDIS_DOWN as exc:
        err.print(f"[red]error:[/red] Redis at {mask_url(url)} unreachable: {exc}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        await client.aclose()


@dlq_app.command("list")
def dlq_list(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most N dead letters (oldest first).")] = 50,
) -> None:
    """Dead letters, oldest first: id, reason and the original entry's fields."""
    settings = settings_or_exit()
    stream = settings.fast_path.dead_letter_stream

    async def go(client: Any) -> list[dict[str, Any]]:
        return [d.to_json() async for d in iter_dead_letters(client, stream, limit)]

    letters: list[dict[str, Any]] = asyncio.run(_with_client(settings, go))
    if json_out:
        out.print_json(json.dumps(letters, ensure_ascii=False))
        return
    table = Table(title=f"{stream}: {len(letters)} shown (oldest first)")
    for col in ("id", "original id", "rejected at", "reason", "fields"):
        table.add_column(col, overflow="fold")
    for d in letters:
        fields = d["fields"] or {}
        summary = ", ".join(f"{k}={v[:40]}" for k, v in fields.items() if k != "payload")
        table.add_row(d["id"], d["original_id"] or "", d["rejected_at"] or "", d["reason"], summary)
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids to replay.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Put dead letters back on the events stream (and delete them), one MULTI per entry."""
    if bool(ids) == all_:
        err.print("[red]error:[/red] give dead-letter ids, or --all (not both)", highlight=False)
        raise typer.Exit(2)
    settings = settings_or_exit()
    dead, target = settings.fast_path.dead_letter_stream, settings.redis.stream

    async def go(client: Any) -> ReplayResult:
        return await replay(client, dead, target, None if all_ else list(ids or []))

    result: ReplayResult = asyncio.run(_with_client(settings, go))
    for old, new in result.replayed.items():
        out.print(f"replayed {old} -> {target} {new}", highlight=False)
    for old in result.missing:
        err.print(f"not found in {dead}: {old}", highlight=False)
    for old, why in result.refused.items():
        err.print(f"not replayed {old}: {why}", highlight=False)
    out.print(f"{len(result.replayed)} replayed", highlight=False)
    if result.missing or result.refused:
        raise typer.Exit(1)
