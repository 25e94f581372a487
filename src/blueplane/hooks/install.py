"""Our entries in Cursor's ``hooks.json``: install, uninstall and status, never anyone else's.

- The file is parsed before anything is written; a file that is not a ``{"hooks": {event:
  [entries]}}`` object is never overwritten (``MalformedHooksFile``, exit 2).
- Before each write the previous file is copied to ``hooks.json.bak-<UTC time>``; the new file
  replaces it atomically (a reader, Cursor included, never sees half of it).
- Every entry that is not ours is kept as it was, in its place; ours is recognised by the path
  of the hook command (``…/blueplane/hooks/emit.py``), so installing twice adds nothing twice
  and an install from another checkout replaces the old entry rather than adding a second.
- What we wrote is remembered in ``BLUEPLANE_HOME/hooks/installed.json`` (path, sha256 of the
  bytes, events), so ``status`` can tell when another tool rewrote the file since.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueplane import machine
from blueplane.events import iso_from_ms

EVENTS = (
    "sessionStart", "sessionEnd", "beforeSubmitPrompt", "afterAgentResponse",
    "afterAgentThought", "stop", "preToolUse", "postToolUse", "postToolUseFailure",
    "subagentStart", "subagentStop", "afterFileEdit", "afterShellExecution",
)  # fmt: skip
EMIT_SCRIPT = Path(__file__).with_name("emit.py")
MARKER = "/blueplane/hooks/emit.py"
HOOK_TIMEOUT_S = 5


class MalformedHooksFile(Exception):
    """The existing hooks.json cannot be merged into safely; the message says why."""


@dataclass(frozen=True)
class HookConfig:
    """What the hook command needs, recorded beside it (Cursor gives it no BLUEPLANE_* vars)."""

    home: str
    redis_url: str
    stream: str
    capture_content: bool
    redact_secrets: bool
    machine_id: str
    user: str
    # No URL named at install: the bundled Redis's URL file, tried after redis_url.
    redis_url_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "home": self.home, "redis_url": self.redis_url,
            "redis_url_file": self.redis_url_file, "stream": self.stream,
            "capture_content": self.capture_content, "redact_secrets": self.redact_secrets,
            "machine_id": self.machine_id, "user": self.user,
        }  # fmt: skip


@dataclass
class Change:
    path: Path
    text: str
    backup: Path | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: bool = True


def hooks_path(project: Path | None = None) -> Path:
    """``~/.cursor/hooks.json``, or ``<project>/.cursor/hooks.json``."""
    if project is not None:
        return project.expanduser().resolve() / ".cursor" / "hooks.json"
    return Path.home() / ".cursor" / "hooks.json"


def hook_dir(home: Path) -> Path:
    return home / "hooks"


def config_path(home: Path) -> Path:
    return hook_dir(home) / "hook-config.json"


def state_path(home: Path) -> Path:
    return hook_dir(home) / "installed.json"


def command_for(home: Path, python: str | None = None) -> str:
    """The installed command: an absolute interpreter, isolated start-up, the recorded config."""
    py = python or sys.executable
    return " ".join(
        shlex.quote(p) for p in (py, "-I", "-S", str(EMIT_SCRIPT), str(config_path(home)))
    )


def is_ours(entry: Any) -> bool:
    return isinstance(entry, dict) and MARKER in str(entry.get("command", "")).replace("\\", "/")


def write_hook_config(home: Path, cfg: HookConfig) -> Path:
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(cfg.to_json(), indent=2) + "\n")
    return path


def make_hook_config(
    home: Path,
    redis_url: str,
    stream: str,
    capture_content: bool,
    redact_secrets: bool,
    redis_url_file: Path | None = None,
) -> HookConfig:
    return HookConfig(
        home=str(home), redis_url=redis_url, stream=stream, capture_content=capture_content,
        redact_secrets=redact_secrets, machine_id=machine.machine_id(home),
        user=machine.user_name(), redis_url_file=str(redis_url_file) if redis_url_file else None,
    )  # fmt: skip


def load_hooks_file(path: Path) -> dict[str, Any]:
    """The parsed file ({} when absent); MalformedHooksFile says what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedHooksFile(f"{path}: cannot be read: {exc}") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedHooksFile(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise MalformedHooksFile(f"{path}: the top level is a JSON {type(data).__name__}, "
                                 "not an object")  # fmt: skip
    hooks = data.get("hooks", {})
    if not isinstance(hooks, dict):
        raise MalformedHooksFile(f"{path}: 'hooks' is a JSON {type(hooks).__name__}, "
                                 "not an object of event names")  # fmt: skip
    for event, entries in hooks.items():
        if not isinstance(entries, list):
            raise MalformedHooksFile(f"{path}: 'hooks.{event}' is a JSON "
                                     f"{type(entries).__name__}, not a list")  # fmt: skip
    return data


def plan_install(path: Path, command: str, events: tuple[str, ...] = EVENTS) -> Change:
    """The file with our entry for each event (replacing an old one of ours in place)."""
    data = load_hooks_file(path)
    before = json.dumps(data, sort_keys=True)
    if not data:  # a new file gets Cursor's version key; an existing one is left as it is
        data["version"] = 1
    hooks = data.setdefault("hooks", {})
    added = []
    for event in events:
        entries = hooks.setdefault(event, [])
        ours = [i for i, e in enumerate(entries) if is_ours(e)]
        entry = {"command": command, "timeout": HOOK_TIMEOUT_S}
        if not ours:
            entries.append(entry)
            added.append(event)
            continue
        entries[ours[0]] = entry
        for i in reversed(ours[1:]):  # a duplicate of ours (a hand-merged file): one is enough
            del entries[i]
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return Change(path, text, added=added, changed=json.dumps(data, sort_keys=True) != before)


def plan_uninstall(path: Path) -> Change:
    data = load_hooks_file(path)
    hooks = data.get("hooks", {})
    removed = []
    for event in list(hooks):
        entries = hooks[event]
        kept = [e for e in entries if not is_ours(e)]
        if len(kept) != len(entries):
            removed.append(event)
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]  # the list held only ours
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return Change(path, text, removed=removed, changed=bool(removed))


def apply(change: Change, home: Path, now_ms: int | None = None) -> Change:
    """Back up the previous file, then replace it atomically; remember what we wrote."""
    path = change.path
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime((now_ms or time.time() * 1000) / 1000))
    if path.exists():
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
            n += 1
        backup.write_bytes(path.read_bytes())
        change.backup = backup
    _atomic_write(path, change.text)
    _remember(home, path, change.text)
    return change


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _digest(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def load_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(state_path(home).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(home: Path, path: Path, text: str) -> None:
    state = load_state(home)
    data = json.loads(text)
    ours = sorted(e for e, entries in data.get("hooks", {}).items()
                  if any(is_ours(x) for x in entries))  # fmt: skip
    if ours:
        state[str(path)] = {"sha256": _digest(text), "events": ours,
                            "written_at": iso_from_ms(time.time() * 1000)}  # fmt: skip
    else:
        state.pop(str(path), None)
    state_path(home).parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(state_path(home), json.dumps(state, indent=2) + "\n")


def last_fired(home: Path) -> dict[str, str]:
    """When each event last reached the hook command (the mtimes it leaves)."""
    folder = hook_dir(home) / "fired"
    out = {}
    if folder.is_dir():
        for f in folder.iterdir():
            try:
                out[f.name] = iso_from_ms(f.stat().st_mtime * 1000)
            except OSError:
                continue
    return out


def spool_pending(home: Path) -> int:
    folder = home / "spool"
    if not folder.is_dir():
        return 0
    return sum(1 for f in folder.iterdir() if f.suffix == ".json" and not f.name.startswith("."))


def status(home: Path, extra_paths: list[Path] | None = None) -> dict[str, Any]:
    """Which events are installed where, whether the file changed under us, last fired."""
    state = load_state(home)
    paths = [hooks_path()] + [Path(p) for p in state if Path(p) != hooks_path()]
    for p in extra_paths or []:
        if p not in paths:
            paths.append(p)
    fired = last_fired(home)
    files = []
    for path in paths:
        entry: dict[str, Any] = {"path": str(path), "exists": path.exists(), "problem": None}
        remembered = state.get(str(path))
        installed: list[str] = []
        command = None
        try:
            data = load_hooks_file(path)
            for event, entries in data.get("hooks", {}).items():
                for e in entries:
                    if is_ours(e):
                        installed.append(event)
                        command = e.get("command")
        except MalformedHooksFile as exc:
            entry["problem"] = str(exc)
        if remembered is None and not installed:
            continue
        changed = False
        if remembered is not None and path.exists():
            try:
                changed = _digest(path.read_bytes()) != remembered.get("sha256")
            except OSError:
                changed = True
        elif remembered is not None:
            changed = True
        expected = remembered.get("events", []) if remembered else []
        entry.update(
            events={e: {"installed": e in installed, "last_fired": fired.get(e)} for e in EVENTS},
            missing=[e for e in expected if e not in installed],
            command=command,
            changed_since_install=changed,
            written_at=remembered.get("written_at") if remembered else None,
        )
        if changed:
            entry["changed_note"] = "hooks.json was rewritten since blueplane wrote it" + (
                f"; our entries for {', '.join(entry['missing'])} are gone"
                if entry["missing"]
                else "; our entries are still there"
            )
        files.append(entry)
    return {"files": files, "last_fired": fired, "spool_pending": spool_pending(home),
            "config": str(config_path(home)) if config_path(home).exists() else None}  # fmt: skip
