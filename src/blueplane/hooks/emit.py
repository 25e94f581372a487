"""The hook command: one Cursor hook event on stdin → one entry on ``telemetry:events``.

Cursor runs this once per event and waits for it, so it is built for start-up time and for
never getting in the way:

- Run as ``<python> -I -S <this file> <hook-config.json>``: no ``site``, no environment, no
  third-party import. It speaks the Redis protocol itself over one socket (``redis-py``,
  ``pydantic`` and the server would cost more than the whole budget to import).
- Everything it needs (home, Redis URL, stream, privacy settings, machine id, user) is in the
  JSON file ``blueplane hooks install`` recorded beside the installed command, because Cursor
  gives it no ``BLUEPLANE_*`` variable, no venv and a minimal ``PATH``.
- It always prints the neutral answer and exits 0. An event it cannot send (Redis down,
  refused) is written to ``BLUEPLANE_HOME/spool/`` and replayed by the server exactly once;
  input it cannot use (empty, not JSON, over 1 MB, no ``hook_event_name``) is spooled as a
  problem record that the server reports once in ``status``.
"""

from __future__ import annotations

# The C modules behind ``socket`` and ``hashlib``: the Python wrappers import selectors, enum
# and OpenSSL, which cost more start-up time than everything else this command does.
import _socket
import json
import os
import sys
import time

try:
    from _sha2 import sha256  # Python ≥ 3.12
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        from hashlib import sha256

MAX_INPUT_BYTES = 1_048_576
CONNECT_TIMEOUT_S = 0.25
IO_TIMEOUT_S = 1.0
DEFAULT_STREAM = "telemetry:events"
# Fields whose text is content: subject to capture_content and redaction.
CONTENT_FIELDS = frozenset(
    {"prompt", "text", "tool_input", "tool_output", "output", "command", "edits", "content",
     "task", "error_message", "attachments", "result"}
)  # fmt: skip
# Answers: beforeSubmitPrompt lets the prompt through; every other event gets ``{}``, which
# changes nothing. An explicit "allow" for preToolUse would skip Cursor's own approval prompt.
RESPONSES = {"beforeSubmitPrompt": '{"continue": true}'}


def _iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def workspace_hash(path: str) -> str:
    """The extension's ``sha256(normalised path)[:16]``."""
    p = os.path.abspath(os.path.expanduser(path))
    p = p.rstrip("/\\") or p
    return sha256(p.encode("utf-8")).hexdigest()[:16]


def _hide(payload: dict, key: str, value: object) -> None:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    payload.pop(key, None)
    payload[f"{key}_length"] = len(text)
    payload[f"{key}_sha256"] = sha256(text.encode("utf-8", "replace")).hexdigest()


def build_fields(event: dict, cfg: dict) -> dict[str, str]:
    """The flat stream fields of one hook event (DESIGN §6)."""
    name = event.get("hook_event_name")
    if not isinstance(name, str) or not name:
        raise ValueError("no 'hook_event_name' in the hook input")
    payload = dict(event)
    capture = cfg.get("capture_content", True)
    scrub = None
    if capture and cfg.get("redact_secrets", True):
        from blueplane.redact import redact as scrub
    for key in CONTENT_FIELDS.intersection(payload):
        value = payload[key]
        if value is None:
            continue
        if not capture:
            _hide(payload, key, value)
        elif scrub is not None:
            payload[key] = scrub(value)
    roots = event.get("workspace_roots")
    root = roots[0] if isinstance(roots, list) and roots and isinstance(roots[0], str) else None
    conv = event.get("conversation_id") or event.get("session_id")
    conv = conv if isinstance(conv, str) else None
    gen = event.get("generation_id")
    metadata = {
        "source": "cursor_hook",
        "workspace_hash": workspace_hash(root) if root else None,
        "workspace_path": root,
        "conversation_id": conv,
        "generation_id": gen if isinstance(gen, str) and gen else None,
        "transcript_path": event.get("transcript_path")
        if isinstance(event.get("transcript_path"), str)
        else None,
        "machine_id": cfg.get("machine_id"),
        "user": cfg.get("user"),
    }
    fields = {
        "version": "0.1.0",
        "event_type": name,
        "hook_type": "CursorHook",
        "platform": "cursor",
        "event_id": os.urandom(16).hex(),
        "timestamp": _iso_now(),
        "metadata": json.dumps(
            {k: v for k, v in metadata.items() if v is not None}, ensure_ascii=False
        ),
        "payload": json.dumps(payload, ensure_ascii=False),
    }
    if conv:
        fields["session_id"] = conv
    return fields


# ----------------------------------------------------------------- Redis, by hand
def _command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse_url(url: str) -> tuple[str, str | int, str | None, str | None, str]:
    """``(kind, host or path, user, password, db)`` of ``redis://[[user]:pass@]host[:port][/db]``
    or ``unix:///path[?db=n]`` (no urllib: its import costs start-up time)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "unix"):
        raise ValueError(f"Redis URL scheme {scheme!r} is not supported by the hook command")
    user = password = None
    if scheme == "unix":
        path, _, query = rest.partition("?")
        db = "0"
        for pair in query.split("&"):
            if pair.startswith("db="):
                db = pair[3:]
        return "unix", path, None, None, db
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        cred, _, netloc = netloc.rpartition("@")
        u, has_pw, pw = cred.partition(":")
        user, password = (u or None, pw) if has_pw else (None, u)
        if "%" in (password or "") or "%" in (user or ""):
            from urllib.parse import unquote

            user = unquote(user) if user else None
            password = unquote(password) if password else password
    host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    host = host.strip("[]") or "localhost"
    return "tcp", f"{host}:{port or 6379}", user, password, (path.split("?")[0] or "0")


def _connect(url: str) -> tuple[_socket.socket, list[bytes]]:
    """A connected socket and the AUTH/SELECT commands the URL asks for."""
    kind, where, user, password, db = parse_url(url)
    if kind == "unix":
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        target: object = where
    else:
        host, _, port = str(where).rpartition(":")
        family, _, _, _, target = _socket.getaddrinfo(host, int(port), 0,
                                                      _socket.SOCK_STREAM)[0]  # fmt: skip
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(IO_TIMEOUT_S)
    pre: list[bytes] = []
    if password is not None:
        pre.append(_command("AUTH", user, password) if user else _command("AUTH", password))
    if db not in ("", "0"):
        pre.append(_command("SELECT", db))
    return sock, pre


def _reply(buf: bytearray, sock: _socket.socket) -> bytes:
    """One RESP reply (simple, error, integer or bulk); an error reply raises."""

    def line() -> bytes:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("Redis closed the connection")
            buf.extend(chunk)
        i = buf.index(b"\r\n")
        out = bytes(buf[:i])
        del buf[: i + 2]
        return out

    head = line()
    if head[:1] == b"-":
        raise RuntimeError(head[1:].decode("utf-8", "replace"))
    if head[:1] == b"$":
        n = int(head[1:])
        if n < 0:
            return b""
        while len(buf) < n + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("Redis closed the connection")
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[: n + 2]
        return out
    return head[1:]


def xadd(url: str, stream: str, fields: dict[str, str]) -> bytes:
    """``XADD stream * fields…`` in one round-trip; returns the entry id."""
    sock, pre = _connect(url)
    try:
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        sock.sendall(b"".join([*pre, _command("XADD", stream, "*", *flat)]))
        buf = bytearray()
        for _ in pre:
            _reply(buf, sock)
        return _reply(buf, sock)
    finally:
        sock.close()


# ----------------------------------------------------------------- spool
def spool(home: str, record: dict) -> None:
    """Write one record to ``home/spool/`` atomically (a reader never sees half a file)."""
    folder = os.path.join(home, "spool")
    os.makedirs(folder, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}.json"
    tmp = os.path.join(folder, "." + name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False)
    os.replace(tmp, os.path.join(folder, name))


def _mark_fired(home: str, name: str) -> None:
    """``hooks status`` shows when each event last fired: the mtime of one small file."""
    if not name.isidentifier():
        return
    folder = os.path.join(home, "hooks", "fired")
    path = os.path.join(folder, name)
    try:
        os.utime(path)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        open(path, "a").close()


def handle(raw: bytes, cfg: dict) -> tuple[str, dict | None]:
    """Send one event; returns (the answer for Cursor, a spool record or None)."""
    home = cfg.get("home") or os.path.expanduser("~/.blueplane")
    if len(raw) > MAX_INPUT_BYTES:
        return "{}", {"problem": f"hook input over {MAX_INPUT_BYTES} bytes", "at": _iso_now()}
    try:
        event = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        return "{}", {"problem": f"hook input is not JSON: {exc}", "at": _iso_now(),
                      "bytes": len(raw)}  # fmt: skip
    if event is None:
        return "{}", {"problem": "hook input is empty", "at": _iso_now()}
    if not isinstance(event, dict):
        return "{}", {"problem": f"hook input is a JSON {type(event).__name__}, not an object",
                      "at": _iso_now()}  # fmt: skip
    name = event.get("hook_event_name")
    answer = RESPONSES.get(name, "{}") if isinstance(name, str) else "{}"
    try:
        fields = build_fields(event, cfg)
    except ValueError as exc:
        return answer, {"problem": str(exc), "at": _iso_now()}
    _mark_fired(home, fields["event_type"])
    error = "no Redis URL"
    for url in _urls(cfg):
        try:
            xadd(url, cfg.get("stream") or DEFAULT_STREAM, fields)
            return answer, None
        except (OSError, RuntimeError, ValueError) as exc:
            error = f"{url}: {type(exc).__name__}: {exc}"
    return answer, {"fields": fields, "error": error, "at": _iso_now()}


def _urls(cfg: dict) -> list[str]:
    """The recorded URL, then (no URL named at install) the bundled Redis the server started."""
    urls = [cfg.get("redis_url") or "redis://localhost:6379/0"]
    url_file = cfg.get("redis_url_file")
    if url_file:
        try:
            with open(url_file, encoding="utf-8") as f:
                bundled = f.read().strip()
        except OSError:
            bundled = ""
        if bundled and bundled not in urls:
            urls.append(bundled)
    return urls


def main(argv: list[str]) -> int:
    answer = "{}"
    cfg: dict = {}
    try:
        if len(argv) > 1:
            with open(argv[1], encoding="utf-8") as f:
                cfg = json.load(f)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if here not in sys.path:  # -I leaves the package's own folder off sys.path
            sys.path.insert(0, here)
        raw = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        answer, record = handle(raw, cfg)
        if record is not None:
            spool(cfg.get("home") or os.path.expanduser("~/.blueplane"), record)
    except Exception as exc:  # noqa: BLE001 - Cursor must get its answer whatever happened
        try:
            spool(cfg.get("home") or os.path.expanduser("~/.blueplane"),
                  {"problem": f"hook command failed: {type(exc).__name__}: {exc}",
                   "at": _iso_now()})  # fmt: skip
        except OSError:
            print(f"blueplane hook: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
