"""TranscriptFollower: Cursor's agent transcripts, each new line once, as ``transcript_message``.

Cursor appends every agent conversation to
``~/.cursor/projects/<folder path with / as ->/agent-transcripts/<id>/<id>.jsonl`` (subagents in
``<id>/subagents/<sub>.jsonl``; older builds a flat ``<id>.txt``) while the agent runs. The
follower reads the transcripts of active workspaces and the ``transcript_path`` hook events name:

- **Exactly once.** A file's read position (byte offset, line number, turn) is its watermark,
  written by the publisher in the same Lua step that ``XADD``s the lines (like the database
  layouts' watermarks); each line's dedup id is ``<conversation>:<line>``, so a crash between
  chunks re-reads without repeating.
- **Half-written last line.** Only lines ending in a newline are read, except a final line that
  is complete JSON and has not changed for ``TAIL_SETTLE_S`` (a writer that ends without one).
- **Bad lines** (not JSON, not an object) are skipped, counted (``bad_lines``, logged once per
  file) and passed: later lines are still read.
- **A replaced or truncated file** (other inode, or shorter than the position) is read again from
  the start; the dedup ids of lines already sent stop the repeats within the dedup window.
- Text obeys ``capture_content`` and the redaction of secrets, like hook events.

File events (``watchfiles``) wake it at once; a poll every ``poll_s`` catches anything missed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchfiles import awatch

from blueplane.aio import until_tick, wait_any
from blueplane.conversation_index import UNKNOWN_WORKSPACE
from blueplane.cursor.layouts.base import TraceItem
from blueplane.cursor.layouts.conversation import text_parts
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.events import TranscriptPayload, TranscriptToolUse
from blueplane.health import Health
from blueplane.publisher import Destination, Publisher
from blueplane.redact import redact_text

log = logging.getLogger("blueplane.transcripts")

LAYOUT = "agent_transcript"
READ_CHUNK_BYTES = 4 * 1024 * 1024
TAIL_SETTLE_S = 1.0
RESCAN_S = 5.0


@functools.lru_cache(maxsize=4096)
def project_folder_key(name: str) -> str:
    """Cursor's project folder name of a workspace path, compared loosely: every run of
    characters other than letters and digits is one ``-``, no leading or trailing ``-``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def conversation_of(path: Path) -> tuple[str, str | None]:
    """``(conversation id, parent id)`` from a transcript's place in ``agent-transcripts``."""
    if path.parent.name == "subagents":
        return path.stem, path.parent.parent.name
    return path.stem, None


@dataclass
class FileState:
    """A transcript's read position: its watermark."""

    offset: int = 0
    line: int = 0
    turn: int = -1
    bad: int = 0
    inode: int | None = None

    def to_watermark(self) -> dict[str, Any]:
        return {"offset": self.offset, "line": self.line, "turn": self.turn, "bad": self.bad,
                "inode": self.inode}  # fmt: skip

    @classmethod
    def from_watermark(cls, wm: dict[str, Any] | None) -> FileState:
        if not wm:
            return cls()
        return cls(int(wm.get("offset", 0)), int(wm.get("line", 0)), int(wm.get("turn", -1)),
                   int(wm.get("bad", 0)), wm.get("inode"))  # fmt: skip


@dataclass
class ParsedLines:
    payloads: list[TranscriptPayload] = field(default_factory=list)
    state: FileState = field(default_factory=FileState)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def _text_and_tools(content: Any) -> tuple[str | None, list[TranscriptToolUse]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    tools: list[TranscriptToolUse] = []
    if isinstance(content, list):
        for c in content:
            if not isinstance(c, dict):
                continue
            if c.get("type") == "text" and isinstance(c.get("text"), str):
                texts.append(c["text"])
            elif c.get("type") == "tool_use":
                tid, name = c.get("id"), c.get("name")
                tools.append(
                    TranscriptToolUse(
                        id=tid if isinstance(tid, str) else None,
                        name=name if isinstance(name, str) else None,
                    )
                )
    return ("\n".join(texts) if texts else None), tools


def parse_lines(
    data: bytes,
    state: FileState,
    *,
    conversation_id: str,
    parent_id: str | None,
    path: str,
    capture_content: bool,
    redact: bool,
    take_tail: bool,
    legacy_text: bool = False,
) -> ParsedLines:
    """The complete lines of ``data`` (read from ``state.offset``) as payloads."""
    out = ParsedLines(state=FileState(**state.__dict__))
    st = out.state
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            tail = data[pos:]
            if not take_tail or not _complete(tail, legacy_text):
                break  # half-written: wait for the rest
            raw, end = tail, len(data)
        else:
            raw, end = data[pos:nl], nl + 1
        st.offset += end - pos
        pos = end
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        lineno = st.line
        st.line += 1
        try:
            text_line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            st.bad += 1
            out.bad_lines.append((lineno, f"not UTF-8: {exc}"))
            continue
        role: str | None
        entry_type = status = None
        tools: list[TranscriptToolUse] = []
        if legacy_text:
            m = re.match(r"^\s*(user|assistant)\s*:\s*(.*)$", text_line, re.I | re.S)
            role = m.group(1).lower() if m else None
            text: str | None = m.group(2) if m else text_line
        else:
            try:
                obj = json.loads(text_line)
            except json.JSONDecodeError as exc:
                st.bad += 1
                out.bad_lines.append((lineno, f"not JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                st.bad += 1
                out.bad_lines.append((lineno, f"a JSON {type(obj).__name__}, not an object"))
                continue
            role = obj.get("role") if isinstance(obj.get("role"), str) else None
            entry_type = obj.get("type") if isinstance(obj.get("type"), str) else None
            status = obj.get("status") if isinstance(obj.get("status"), str) else None
            msg = obj.get("message")
            text, tools = _text_and_tools(msg.get("content") if isinstance(msg, dict) else None)
        if role == "user":
            st.turn += 1
        if text is not None and capture_content and redact:
            text = redact_text(text)
        shown, length, digest = text_parts(text, capture_content)
        item = f"{conversation_id}:{lineno}"
        out.payloads.append(
            TranscriptPayload(
                generation_id=item, item_id=item, source_layout=LAYOUT,
                conversation_id=conversation_id, parent_conversation_id=parent_id,
                transcript_path=path, line=lineno, turn_index=st.turn, role=role,
                entry_type=entry_type, status=status, text=shown, text_length=length,
                text_sha256=digest, tool_uses=tools or None,
            )
        )  # fmt: skip
    return out


def _complete(tail: bytes, legacy_text: bool) -> bool:
    if legacy_text:
        return bool(tail.strip())
    try:
        return isinstance(json.loads(tail), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


@dataclass(frozen=True)
class Followed:
    path: Path
    workspace_hash: str
    workspace_path: str | None
    session_id: str | None


class TranscriptFollower:
    def __init__(
        self,
        sessions: SessionMonitor,
        publisher: Publisher,
        projects_dir: Path,
        health: Health,
        *,
        capture_content: bool = True,
        redact: bool = True,
        poll_s: float = 2.0,
        debounce_ms: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.projects_dir = projects_dir
        self.health = health.component("transcripts")
        self.capture = capture_content
        self.redact = redact
        self.poll_s = poll_s
        self.debounce_ms = debounce_ms
        self.clock = clock
        self._states: dict[Path, FileState] = {}
        self._bad_logged: set[Path] = set()
        self._restart = asyncio.Event()
        self._dirs: set[Path] = set()

    # ----------------------------------------------------------------- what to follow
    def _project_dirs(self) -> dict[str, tuple[str, str]]:
        """Project folder key -> (workspace hash, path) for every active workspace."""
        out = {}
        for ws, sessions in self.sessions.active_workspaces().items():
            path = sessions[-1].workspace_path
            if path:
                out[project_folder_key(path)] = (ws, path)
        return out

    def targets(self) -> list[Followed]:
        """Every transcript file of an active workspace, and those hook events named."""
        found: dict[Path, Followed] = {}
        active = self.sessions.active_workspaces()
        # No projects folder (no agent transcripts yet): no key computed per active workspace
        # at every poll, one ``stat``.
        wanted = self._project_dirs() if self.projects_dir.is_dir() else {}
        dirs: set[Path] = set()
        if wanted:
            for entry in self.projects_dir.iterdir():
                hit = wanted.get(project_folder_key(entry.name))
                folder = entry / "agent-transcripts"
                if hit is None or not folder.is_dir():
                    continue
                dirs.add(folder)
                ws, wpath = hit
                sid = active[ws][-1].session_id if ws in active else None
                for f in folder.rglob("*"):
                    if f.suffix in (".jsonl", ".txt") and f.is_file():
                        found[f] = Followed(f, ws, wpath, sid)
        for tpath, (conv, ws) in list(self.sessions.transcript_paths.items()):
            f = Path(tpath)
            if f in found or not f.is_file():
                continue
            dirs.add(f.parent)
            sid = active[ws][-1].session_id if ws in active else (conv or None)
            found[f] = Followed(f, ws, None, sid)
            subs = f.parent / "subagents"
            if subs.is_dir():
                dirs.add(subs)
                for s in subs.glob("*.jsonl"):
                    found.setdefault(s, Followed(s, ws, None, sid))
        if dirs != self._dirs:
            self._dirs = dirs
            self._restart.set()
        self.health.set_counter("files_followed", len(found))
        return sorted(found.values(), key=lambda x: str(x.path))

    # ----------------------------------------------------------------- reading
    async def read_file(self, target: Followed) -> int:
        """Publish the new complete lines of one file; returns lines published."""
        path = target.path
        db_key = f"transcript:{path}"
        state = self._states.get(path)
        if state is None:
            wm = (await self.publisher.load_watermarks(db_key)).get(LAYOUT)
            state = FileState.from_watermark(wm)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._states.pop(path, None)
            return 0
        if (state.inode is not None and state.inode != st.st_ino) or st.st_size < state.offset:
            log.info("transcript %s was replaced or truncated: reading it from the start", path)
            state = FileState()
        state.inode = st.st_ino
        self._states[path] = state
        if st.st_size == state.offset:
            return 0
        with path.open("rb") as f:
            f.seek(state.offset)
            data = f.read(READ_CHUNK_BYTES)
        conv, parent = conversation_of(path)
        settled = self.clock() - st.st_mtime >= TAIL_SETTLE_S
        parsed = parse_lines(
            data, state, conversation_id=conv, parent_id=parent, path=str(path),
            capture_content=self.capture, redact=self.redact, take_tail=settled,
            legacy_text=path.suffix == ".txt",
        )  # fmt: skip
        for lineno, why in parsed.bad_lines:
            self.health.count("bad_lines")
            if path not in self._bad_logged:
                self._bad_logged.add(path)
                log.error("transcript %s line %d skipped: %s (further bad lines of this file "
                          "are counted, not logged)", path, lineno + 1, why)  # fmt: skip
            self.health.last_error = f"{path.name} line {lineno + 1}: {why}"
        if parsed.state.offset == state.offset:
            return 0
        sid = target.session_id or conv
        dest = Destination(target.workspace_hash or UNKNOWN_WORKSPACE, sid, target.workspace_path)
        now_ms = int(self.clock() * 1000)
        routed = [(dest, TraceItem(p, timestamp_ms=now_ms)) for p in parsed.payloads]
        sent = await self.publisher.publish(routed, db_key, LAYOUT, parsed.state.to_watermark())
        self._states[path] = parsed.state
        self.health.count("lines_published", sent)
        return sent

    async def poll_once(self) -> int:
        total = 0
        for target in self.targets():
            try:
                total += await self.read_file(target)
            except OSError as exc:
                self.health.count("read_errors")
                self.health.last_error = f"{target.path}: {exc}"
                log.warning("transcript %s: %s", target.path, exc)
        return total

    # ----------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        self.health.status = "ok"
        while not stop.is_set():
            self.sessions.transcripts_changed.clear()
            await self.poll_once()
            self._restart.clear()
            dirs = [d for d in self._dirs if d.is_dir()]
            if not dirs:
                await wait_any([stop, self.sessions.transcripts_changed], until_tick(self.poll_s))
                continue
            halt = _Either(stop, self._restart)
            try:
                async for _ in awatch(
                    *dirs, stop_event=halt, debounce=self.debounce_ms, step=self.debounce_ms,
                    rust_timeout=int(self.poll_s * 1000), yield_on_timeout=True, recursive=True,
                ):  # fmt: skip
                    await self.poll_once()
                    if self.sessions.transcripts_changed.is_set():
                        self.sessions.transcripts_changed.clear()
                        self._restart.set()
                    if halt.is_set():
                        break
            except (OSError, RuntimeError) as exc:
                log.warning("watching transcripts stopped (%s); polling", exc)
                self.health.count("watch_failures")
                await wait_any([stop], self.poll_s)


class _Either:
    """``is_set`` of either event: watchfiles stops when the server stops or targets change."""

    def __init__(self, a: asyncio.Event, b: asyncio.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()
