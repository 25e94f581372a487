"""``blueplane status``: the server's health file and the stream, for people or ``--json``."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from rich.table import Table

from blueplane.cli.common import JsonOpt, app, out, settings_or_exit, store_error_text
from blueplane.cli.formatting import component_line
from blueplane.cli.stream_stats import stream_stats
from blueplane.config import Settings
from blueplane.stores import open_errors, open_store, store_exists
from blueplane.urls import mask_url


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


def consume_processes(settings: Settings) -> dict[str, Any]:
    """The ``blueplane consume`` processes of this home (``consume-<name>.json``): state, pid,
    components; ``running`` is checked against the pid."""
    out: dict[str, Any] = {}
    for path in sorted(settings.home.glob("consume-*.json")):
        try:
            snap = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        server = snap.get("server", {})
        name = server.get("consumer") or path.stem.removeprefix("consume-")
        out[name] = {
            "running": server.get("state") == "running" and pid_alive(server.get("pid")),
            "server": server,
            "components": snap.get("components", {}),
        }
    return out


def store_stats(settings: Settings) -> dict[str, Any]:
    """The store's URL (masked) and its event counts by type, or why they cannot be read."""
    stats: dict[str, Any] = {"url": mask_url(settings.store_url), "counts": {}}
    try:
        if not store_exists(settings):
            return stats
        store = open_store(settings.store_url, readonly=True)
    except open_errors() as exc:  # shown, not raised: status reports every part it can
        stats["error"] = store_error_text(settings, exc)
        return stats
    try:
        stats["counts"] = store.counts()
    finally:
        store.close()
    return stats


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
        "store": store_stats(settings),
        "consume_processes": consume_processes(settings),
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
    for name, proc in result["consume_processes"].items():
        state = "[green]running[/green]" if proc["running"] else "[yellow]not running[/yellow]"
        out.print(f"consume {name}: {state}  pid {proc['server'].get('pid', '-')}")
        for cname, comp in proc["components"].items():
            out.print("  " + component_line(cname, comp), highlight=False)
    for c in st.get("consumers", []):
        age = c.get("oldest_pending_age_ms")
        out.print(
            f"  consumer {c['name']}: pending {c['pending']}, idle {c['idle_ms']} ms, "
            f"oldest pending {'-' if age is None else f'{age} ms old'}",
            highlight=False,
        )
    store = result["store"]
    if store.get("error"):
        out.print(f"Store {store['url']}: [red]{store['error']}[/red]", highlight=False)
    else:
        total = sum(store.get("counts", {}).values())
        out.print(f"Store {store['url']}: {total} events", highlight=False)
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
