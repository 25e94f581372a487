"""``blueplane workspaces``: the Cursor workspaces on this machine and their databases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from redis.exceptions import RedisError
from rich.table import Table

from blueplane.broker import REDIS_DOWN, make_client, resolve_client_url
from blueplane.cli.common import JsonOpt, app, out, settings_or_exit
from blueplane.cli.formatting import size
from blueplane.config import Settings
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
from blueplane.events import iso_from_ms


@app.command()
def workspaces(json_out: JsonOpt = False) -> None:
    """The Cursor workspaces found on this machine and how each maps to its database."""
    settings = settings_or_exit()
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
            r["workspace_hash"] or "", size(r["database_bytes"]), r["last_activity"] or "",
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


def _active_hashes(settings: Settings) -> set[str]:
    async def go() -> set[str]:
        client = make_client(await resolve_client_url(settings), settings.redis)
        try:
            sessions = await SessionMonitor.stored_sessions(client, settings.keys())
            return {s.workspace_hash for s in sessions.values()}
        except (*REDIS_DOWN, RedisError):
            return set()
        finally:
            await client.aclose()

    return asyncio.run(go())
