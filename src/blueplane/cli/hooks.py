"""``blueplane hooks install|uninstall|status``: our entries in Cursor's hooks.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from blueplane.cli.common import JsonOpt, app, err, out, settings_or_exit
from blueplane.hooks import install as hooks

hooks_app = typer.Typer(no_args_is_help=True, help="Cursor hooks: exact tokens, sessions.")
app.add_typer(hooks_app, name="hooks")

ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", help="Use DIR/.cursor/hooks.json instead of ~/.cursor/hooks.json."),
]


@hooks_app.command("install")
def install_cmd(
    project: ProjectOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the file; write nothing.")
    ] = False,
) -> None:
    """Add the hook command for each event to hooks.json (a backup of the file first)."""
    s = settings_or_exit()
    home = s.home.expanduser().resolve()  # the command runs from another folder
    path = hooks.hooks_path(project)
    command = hooks.command_for(home)
    try:
        change = hooks.plan_install(path, command)
    except hooks.MalformedHooksFile as exc:
        err.print(f"[red]error:[/red] {exc}; not changed", highlight=False)
        raise typer.Exit(2) from exc
    if dry_run:
        out.out(change.text, end="", highlight=False)
        return
    cfg = hooks.make_hook_config(
        home, s.redis_url, s.redis.stream, s.hooks_capture_content, s.hooks.redact_secrets,
        None if s.redis_url_explicit else s.bundled_redis_dir.expanduser().resolve() / "url",
    )  # fmt: skip
    cfg_path = hooks.write_hook_config(home, cfg)
    if not change.changed:
        out.print(f"hooks already installed in {path} (config {cfg_path})", highlight=False)
        return
    hooks.apply(change, home)
    if change.backup:
        out.print(f"backup: {change.backup}", highlight=False)
    what = ", ".join(change.added) if change.added else "entries updated"
    out.print(f"installed in {path}: {what}", highlight=False)
    out.print(f"command: {command}", highlight=False)


@hooks_app.command("uninstall")
def uninstall_cmd(project: ProjectOpt = None) -> None:
    """Remove our entries from hooks.json; every other entry stays."""
    s = settings_or_exit()
    path = hooks.hooks_path(project)
    try:
        change = hooks.plan_uninstall(path)
    except hooks.MalformedHooksFile as exc:
        err.print(f"[red]error:[/red] {exc}; not changed", highlight=False)
        raise typer.Exit(2) from exc
    if not change.changed:
        out.print(f"no blueplane hooks in {path}", highlight=False)
        return
    hooks.apply(change, s.home.expanduser().resolve())
    if change.backup:
        out.print(f"backup: {change.backup}", highlight=False)
    out.print(f"removed from {path}: {', '.join(change.removed)}", highlight=False)


@hooks_app.command("status")
def status_cmd(json_out: JsonOpt = False) -> None:
    """Which events are installed where, whether the file changed since, when each fired."""
    s = settings_or_exit()
    report = hooks.status(s.home.expanduser().resolve())
    if json_out:
        out.print_json(json.dumps(report))
        return
    if not report["files"]:
        out.print("no blueplane hooks installed (blueplane hooks install)")
    for f in report["files"]:
        out.print(f"[bold]{f['path']}[/bold]", highlight=False)
        if f.get("problem"):
            out.print(f"  problem: {f['problem']}", highlight=False)
        if f.get("changed_note"):
            out.print(f"  [yellow]warning:[/yellow] {f['changed_note']}", highlight=False)
        for event, info in (f.get("events") or {}).items():
            mark = "installed" if info["installed"] else "-"
            fired = info["last_fired"] or "never"
            out.print(f"  {event:<20} {mark:<10} last fired {fired}", highlight=False)
    out.print(f"spooled events waiting for replay: {report['spool_pending']}")
