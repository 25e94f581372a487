"""``blueplane ui``: serve the local page on 127.0.0.1 (and nothing else)."""

from __future__ import annotations

import errno
import socket
import threading
import webbrowser
from typing import Annotated

import typer

from blueplane.cli.common import app, err, settings_or_exit

DEFAULT_PORT = 8765
LOOPBACK = "127.0.0.1"


def check_host(host: str) -> None:
    """Only the loopback address: the page shows prompts and code, and has no login."""
    if host in (LOOPBACK, "localhost"):
        return
    why = (
        "the page shows your prompts, answers and code and has no login, so it listens on "
        f"{LOOPBACK} only; reach it from elsewhere through an SSH tunnel "
        f"(ssh -L {DEFAULT_PORT}:{LOOPBACK}:{DEFAULT_PORT} this-host)"
    )
    err.print(f"[red]error:[/red] refusing to listen on {host!r}: {why}", highlight=False)
    raise typer.Exit(2)


def bind(port: int) -> socket.socket:
    """The listening socket, bound before the server starts so a port in use is one line."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            msg = f"port {port} on {LOOPBACK} is already in use; choose another with --port N"
        else:
            msg = f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}"
        err.print(f"[red]error:[/red] {msg}", highlight=False)
        raise typer.Exit(1) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = DEFAULT_PORT,
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in the browser.")] = False,
    host: Annotated[
        str, typer.Option(help="Only 127.0.0.1 (or localhost) is accepted.", hidden=True)
    ] = LOOPBACK,
) -> None:
    """Serve the local page: activity, models, tokens, conversations, live feed, health."""
    import uvicorn

    from blueplane.ui.app import create_app

    check_host(host)
    settings = settings_or_exit()
    sock = bind(port)
    url = f"http://{LOOPBACK}:{port}/"
    config = uvicorn.Config(
        create_app(settings), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    from blueplane.urls import mask_url

    err.print(f"Blueplane page at {url} (store {mask_url(settings.store_url)}); Ctrl-C stops it",
              highlight=False)  # fmt: skip
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server.run(sockets=[sock])
