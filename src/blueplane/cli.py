"""The ``blueplane`` command: run the server, and look at what it captured.

Tables are for people; ``--json`` output is for scripts and its shape is documented in the
README (keys are only ever added, never renamed or removed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.config import ConfigError, Settings, load_settings
from blueplane.cursor.paths import resolve_user_dirs
from blueplane.cursor.schema_detector import SchemaDetector
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.cursor.sqlite_ro import (
    CursorDbError,
    DatabaseMissing,
    Fingerprint,
    ReadOnlyDatabase,
    fingerprint,
)
from blueplane.cursor.workspace_mapper import WorkspaceMapper
from blueplane.dlq_cli import dlq_app
from blueplane.events import SessionEvent, iso_from_ms, normalise_workspace_path, workspace_hash
from blueplane.fast_path.consumer import group_stats
from blueplane.fast_path.dead_letters import dead_letter_count
from blueplane.store import TraceStore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Blueplane Monitor: local telemetry for Cursor's AI, read from its own databases.",
)
session_app = typer.Typer(no_args_is_help=True, help="Send the session events the extension sends.")
app.add_typer(session_app, name="session")
app.add_typer(dlq_app, name="dlq")

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config file (default: $BLUEPLANE_CONFIG).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_state: dict[str, Path | None] = {"config": None}


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    _state["config"] = config


def _settings(config: Path | None = None) -> Settings:
    try:
        return load_settings(config or _state["config"])
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def _setup_logging(level: str) -> None:
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# --------------------------------------------------------------------------- run


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    settings = _settings(config)
    _setup_logging(settings.log_level)
    from blueplane.broker import RedisTooOld
    from blueplane.instance_lock import InstanceLocked
    from blueplane.server import serve

    try:
        asyncio.run(serve(settings))
    except (InstanceLocked, RedisTooOld) as exc:
        logging.getLogger("blueplane.server").error("%s", exc)
        raise typer.Exit(1) from exc


# --------------------------------------------------------------------------- status


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _stream_stats(settings: Settings) -> dict[str, Any]:
    url = await resolve_client_url(settings)
    client = make_client(url)
    stream, fp = settings.redis.stream, settings.fast_path
    stats: dict[str, Any] = {"url": url, "reachable": False}
    try:
        stats["stream_length"] = int(await client.xlen(stream))
        stats["dead_letter_length"] = await dead_letter_count(client, fp.dead_letter_stream)
        stats["reachable"] = True
        stats.update(await group_stats(client, stream, fp.group))
        stats["active_sessions"] = await SessionMonitor.stored_session_count(client)
    except (*REDIS_DOWN, RedisError) as exc:
        stats["error"] = str(exc)
    finally:
        await client.aclose()
    return stats


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Health of the server and of every monitored workspace."""
    settings = _settings()
    snapshot: dict[str, Any] = {}
    if settings.status_path.is_file():
        try:
            snapshot = json.loads(settings.status_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            snapshot = {"error": f"cannot read {settings.status_path}: {exc}"}
    server = snapshot.get("server", {})
    running = server.get("state") == "running" and _pid_alive(server.get("pid"))
    result = {
        "running": running,
        "status_file": str(settings.status_path),
        "server": server,
        "stream": asyncio.run(_stream_stats(settings)),
        "components": snapshot.get("components", {}),
        "workspaces": snapshot.get("workspaces", {}),
        "written_at": snapshot.get("written_at"),
    }
    if json_out:
        out.print_json(json.dumps(result))
        return
    state = "[green]running[/green]" if running else "[yellow]not running[/yellow]"
    out.print(
        f"Server: {state}  pid {server.get('pid', '-')}  since {server.get('started_at', '-')}"
    )
    for warning in server.get("warnings", []):
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    st = result["stream"]
    if st.get("reachable"):
        out.print(
            f"Redis {st['url']}: stream length {st.get('stream_length', 0)}, "
            f"consumer lag {st.get('consumer_lag', '-')}, pending {st.get('pending', 0)}, "
            f"dead-lettered {st.get('dead_letter_length', 0)}, "
            f"active sessions {st.get('active_sessions', 0)}",
            highlight=False,
        )
    else:
        out.print(
            f"Redis {st['url']}: [red]unreachable[/red] {st.get('error', '')}", highlight=False
        )
    for name, comp in result["components"].items():
        counters = ", ".join(f"{k} {v}" for k, v in comp.get("counters", {}).items())
        line = f"{name}: {comp.get('status')}" + (f" ({counters})" if counters else "")
        if comp.get("last_error"):
            line += f" — last error: {comp['last_error']}"
        out.print(line, highlight=False)
    table = Table(title="Monitored workspaces")
    for col in ("workspace", "status", "layout", "last check", "errors", "published", "last error"):
        table.add_column(col, overflow="fold")
    for h, w in result["workspaces"].items():
        table.add_row(
            f"{h}\n{w.get('workspace_path') or ''}", w.get("status", ""), w.get("layout") or "",
            w.get("last_check") or "", str(w.get("errors", 0)), str(w.get("items_published", 0)),
            w.get("last_error") or "",
        )  # fmt: skip
    out.print(table)


# --------------------------------------------------------------------------- workspaces


@app.command()
def workspaces(json_out: JsonOpt = False) -> None:
    """The Cursor workspaces found on this machine and how each maps to its database."""
    settings = _settings()
    user_dirs = resolve_user_dirs(settings.cursor_dirs)
    mapper = WorkspaceMapper(user_dirs, settings.workspace_cache_path)
    folders = mapper.discover()
    active = _active_hashes(settings)
    rows = []
    for f in folders:
        fp = _fingerprint_or_none(f.database)
        rows.append({
            "storage_id": f.storage_id, "user_dir": str(f.user_dir), "kind": f.kind, "uri": f.uri,
            "path": f.local_path, "workspace_hash": f.workspace_hash, "database": str(f.database),
            "database_bytes": fp.size if fp else None,
            "last_activity": iso_from_ms(max(fp.mtime_ns, fp.wal_mtime_ns) / 1e6) if fp else None,
            "layout": _layout_of(f.database) if fp else None,
            "session_active": bool(f.workspace_hash and f.workspace_hash in active),
            "problem": f.problem,
        })  # fmt: skip
    if json_out:
        out.print_json(json.dumps({"user_dirs": [str(d) for d in user_dirs], "workspaces": rows}))
        return
    if not user_dirs:
        out.print("No Cursor User folder found. Set BLUEPLANE_CURSOR_DIRS.")
    table = Table(title=f"Cursor workspaces ({len(rows)})")
    for col in (
        "storage id",
        "path / URI",
        "workspace_hash",
        "db size",
        "last activity",
        "layout",
        "active",
        "problem",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["storage_id"], r["path"] or r["uri"] or f"({r['kind']})",
            r["workspace_hash"] or "", _size(r["database_bytes"]), r["last_activity"] or "",
            r["layout"] or "", "yes" if r["session_active"] else "", r["problem"] or "",
        )  # fmt: skip
    out.print(table)


def _fingerprint_or_none(path: Path) -> Fingerprint | None:
    try:
        return fingerprint(path)
    except DatabaseMissing:
        return None


def _layout_of(path: Path) -> str:
    """What the SchemaDetector finds, read as the monitor reads (read-only, short, bounded)."""
    try:
        return ReadOnlyDatabase(path, 1.0).read_sync(SchemaDetector().detect).describe()
    except CursorDbError as exc:
        return f"{exc.status}: {exc}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _active_hashes(settings: Settings) -> set[str]:
    async def go() -> set[str]:
        client = make_client(await resolve_client_url(settings))
        try:
            sessions = await SessionMonitor.stored_sessions(client)
            return {s.workspace_hash for s in sessions.values()}
        except (*REDIS_DOWN, RedisError):
            return set()
        finally:
            await client.aclose()

    return asyncio.run(go())


# --------------------------------------------------------------------------- traces

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> int:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 date/time; milliseconds since the epoch."""
    from blueplane.events import parse_iso_ms

    m = _RELATIVE.match(text)
    if m:
        return int(((now or time.time()) - float(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    try:
        return parse_iso_ms(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r}: use 30m, 2h, 1d or an ISO 8601 time like 2025-11-26T18:00:00Z"
        ) from exc


@app.command()
def traces(
    json_out: JsonOpt = False,
    workspace: Annotated[
        str | None, typer.Option(help="Only this workspace_hash (or a folder path).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Since: 30m, 2h, 1d, or ISO 8601.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most N traces (the newest).")] = 50,
    trace_type: Annotated[str | None, typer.Option("--type", help="Only this trace_type.")] = None,
) -> None:
    """Captured traces from the local store, oldest first."""
    settings = _settings()
    since_ms = parse_since(since) if since else None
    whash = workspace
    if workspace and not re.fullmatch(r"[0-9a-f]{16}", workspace):
        whash = workspace_hash(normalise_workspace_path(workspace))
    if not settings.store_path.exists():
        rows: list[dict[str, Any]] = []
    else:
        store = TraceStore(settings.store_path, readonly=True)
        try:
            rows = store.traces(whash, since_ms, limit, trace_type)
        finally:
            store.close()
    if json_out:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"Traces ({len(rows)})")
    for col in (
        "time",
        "type",
        "workspace",
        "session",
        "id",
        "role / kind",
        "model",
        "tokens",
        "text",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        p = r["payload"]
        kind = p.get("role") or p.get("generation_type") or p.get("record") or ""
        tokens = ""
        if p.get("input_tokens") is not None or p.get("output_tokens") is not None:
            tokens = f"{p.get('input_tokens', '-')} in / {p.get('output_tokens', '-')} out"
        text = p.get("text") or p.get("description") or p.get("name") or p.get("prompt_text") or ""
        if not text and p.get("text_length"):
            text = f"({p['text_length']} chars, content not captured)"
        rev = f" r{r['revision']}" if r.get("revision") else ""
        table.add_row(
            r["timestamp"] or "", (r["trace_type"] or "") + rev, r["workspace_hash"] or "",
            r["session_id"] or "", r["generation_id"] or "", str(kind),
            p.get("model") or p.get("model_name") or "", tokens, " ".join(str(text).split())[:120],
        )  # fmt: skip
    out.print(table)


# --------------------------------------------------------------------------- session


async def _send(settings: Settings, event: SessionEvent) -> str:
    url = await resolve_client_url(settings)
    client = make_client(url)
    try:
        entry = await client.xadd(settings.redis.stream, event.to_fields())
        return entry.decode() if isinstance(entry, bytes) else str(entry)
    except (*REDIS_DOWN, RedisError) as exc:
        err.print(f"[red]error:[/red] Redis at {url} does not answer: {exc}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        await client.aclose()


async def _sessions_of(settings: Settings, whash: str) -> list[str]:
    client = make_client(await resolve_client_url(settings))
    try:
        sessions = await SessionMonitor.stored_sessions(client)
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
    settings = _settings()
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
    settings = _settings()
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


if __name__ == "__main__":  # pragma: no cover
    app()
