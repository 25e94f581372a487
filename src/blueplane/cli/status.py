"""``blueplane status``: the server's health file and the stream, for people or ``--json``."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from rich.table import Table

from blueplane.cli.common import JsonOpt, app, out, settings_or_exit
from blueplane.cli.formatting import component_line
from blueplane.cli.stream_stats import stream_stats


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Health of the server and of every monitored workspace."""
    settings = settings_or_exit()
    snapshot: dict[str, Any] = {}
    if settings.status_path.is_file():
        try:
            snapshot = json.loads(settings.status_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            snapshot = {"error": f"cannot read {settings.status_path}: {exc}"}
    server = snapshot.get("server", {})
    running = server.get("state") == "running" and pid_alive(server.get("pid"))
    result = {
        "running": running,
        "status_file": str(settings.status_path),
        "server": server,
        "stream": asyncio.run(stream_stats(settings)),
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
        out.print(component_line(name, comp), highlight=False)
    table = Table(title="Monitored workspaces")
    for col in ("workspace", "status", "rollout", "layout", "last check", "errors", "published",
                "last error"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for h, w in result["workspaces"].items():
        rollout = w.get("rollout") or {}
        rollout_cell = (
            ("on: " if rollout.get("enabled") else "off: ") + str(rollout.get("reason", ""))
            if rollout
            else ""
        )
        table.add_row(
            f"{h}\n{w.get('workspace_path') or ''}", w.get("status", ""), rollout_cell,
            w.get("layout") or "",
            w.get("last_check") or "", str(w.get("errors", 0)), str(w.get("items_published", 0)),
            w.get("last_error") or "",
        )  # fmt: skip
    out.print(table)
