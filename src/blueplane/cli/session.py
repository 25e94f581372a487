"""``blueplane session start|end``: the session events the extension sends, by hand."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import typer
from redis.exceptions import RedisError

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.cli.common import app, err, out, settings_or_exit
from blueplane.config import Settings
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.events import SessionEvent, normalise_workspace_path, workspace_hash
from blueplane.machine import machine_id, user_name
from blueplane.urls import mask_url

session_app = typer.Typer(no_args_is_help=True, help="Send the session events the extension sends.")
app.add_typer(session_app, name="session")


async def _send(settings: Settings, event: SessionEvent) -> str:
    url = await resolve_client_url(settings)
    client = make_client(url, settings.redis)
    # who sent it, as in every event the server publishes (a team store tells people apart)
    event.metadata.setdefault("machine_id", machine_id(settings.home))
    event.metadata.setdefault("user", user_name(hashed=settings.identity.hash_user_name))
    try:
        entry = await client.xadd(settings.redis.stream, event.to_fields())
        return entry.decode() if isinstance(entry, bytes) else str(entry)
    except (*REDIS_DOWN, RedisError) as exc:
        err.print(
            f"[red]error:[/red] Redis at {mask_url(url)} does not answer: {exc}", highlight=False
        )
        raise typer.Exit(1) from exc
    finally:
        await client.aclose()


async def _sessions_of(settings: Settings, whash: str) -> list[str]:
    client = make_client(await resolve_client_url(settings), settings.redis)
    try:
        sessions = await SessionMonitor.stored_sessions(client, settings.keys())
        return [sid for sid, s in sessions.items() if s.workspace_hash == whash]
    except (*REDIS_DOWN, RedisError):
        return []
    finally:
        await client.aclose()


WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="The workspace folder.")]
SessionOpt = Annotated[str | None, typer.Option("--session-id", help="Session id (default: new).")]


@session_app.command("start")
def session_start(workspace: WorkspaceOpt, session_id: SessionOpt = None) -> None:
    """Send session_start for a workspace folder, exactly as the extension does."""
    settings = settings_or_exit()
    sid = session_id or str(uuid.uuid4())
    event = SessionEvent.build("session_start", workspace, sid)
    entry = asyncio.run(_send(settings, event))
    out.print(
        f"session_start sent: session {sid}, workspace {event.payload.workspace_hash} "
        f"({event.payload.workspace_path}), entry {entry}",
        highlight=False,
    )


@session_app.command("end")
def session_end(workspace: WorkspaceOpt, session_id: SessionOpt = None) -> None:
    """Send session_end; without --session-id, ends the workspace's only active session."""
    settings = settings_or_exit()
    path = normalise_workspace_path(workspace)
    sid = session_id
    if sid is None:
        active = asyncio.run(_sessions_of(settings, workspace_hash(path)))
        if len(active) != 1:
            what = "no active session" if not active else f"{len(active)} active sessions"
            err.print(f"[red]error:[/red] {path} has {what}; pass --session-id", highlight=False)
            raise typer.Exit(2)
        sid = active[0]
    event = SessionEvent.build("session_end", path, sid)
    entry = asyncio.run(_send(settings, event))
    out.print(f"session_end sent: session {sid}, entry {entry}", highlight=False)
