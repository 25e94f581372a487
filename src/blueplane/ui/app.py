"""``blueplane ui``: the local page and the JSON endpoints behind it (Starlette).

Every endpoint reads the store read-only (a fresh ``mode=ro`` connection per request, or a
read-only PostgreSQL store for ``store.url: postgresql://…``) and the
server's ``status.json``; nothing here writes. The page is static (``static/``), draws with the
vendored uPlot, and polls ``/api/version`` every second: when the store grew it refetches the
overview, the feed and the list, so a new trace shows within about two seconds.

Endpoints (README "The page"): ``/api/overview``, ``/api/tokens``, ``/api/feed``,
``/api/workspaces``, ``/api/conversations`` (``q`` = full-text search),
``/api/conversations/{id}``,
``/api/health``, ``/api/version``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from blueplane import conversations
from blueplane.config import Settings
from blueplane.search import search_conversation_ids
from blueplane.stores import open_store, store_exists
from blueplane.ui import queries

log = logging.getLogger("blueplane.ui")

STATIC = Path(__file__).with_name("static")
HEALTH_CACHE_S = 2.0


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    return max(lo, min(hi, value))


class UiApp:
    """The endpoints, bound to one install's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = queries.StoreReader(settings.store_url)  # SQLite or PostgreSQL
        self._health: tuple[float, dict[str, Any]] | None = None
        self._overviews: dict[tuple[str | None, int, int], bytes] = {}  # also /api/tokens

    # ------------------------------------------------------------------ endpoints
    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def version(self, request: Request) -> JSONResponse:
        with self.reader.connect() as conn:
            return JSONResponse({"last_rowid": queries.last_rowid(conn)})

    def overview(self, request: Request) -> Response:
        """Computed once per change of the store (and per hour, for the 48-hour window): the
        page polls it, and between two batches of the writer nothing in it can change.
        ``?fresh=1`` skips the cache (the benchmark measures both)."""
        workspace = request.query_params.get("workspace") or None
        fresh = request.query_params.get("fresh") == "1"
        with self.reader.connect() as conn:
            key = (workspace, queries.last_rowid(conn), int(time.time() // 3600))
            cached = self._overviews.get(key)
            if cached is None or fresh:
                cached = JSONResponse(queries.overview(conn, workspace).to_json()).body
                if len(self._overviews) > 64:
                    self._overviews.clear()
                self._overviews[key] = cached
        return Response(cached, media_type="application/json")

    def tokens(self, request: Request) -> Response:
        """Tokens per day from the reconciled turns (database, hooks, transcripts) where the
        conversation tables exist; ``{"source": "traces"}`` (the page keeps the overview's
        per-day tokens from the message traces) where they do not. Cached per store change."""
        workspace = request.query_params.get("workspace") or None
        with self.reader.connect() as conn:
            key = (f"tokens:{workspace}", queries.last_rowid(conn), 0)
            if conn is None:
                return JSONResponse({"source": "traces", "days": []})
        cached = self._overviews.get(key)
        if cached is None:
            store = open_store(self.settings.store_url, readonly=True)
            try:
                days = conversations.token_totals_by_day(store, workspace=workspace)
            finally:
                store.close()
            body = {
                "source": "turns" if days else "traces",
                "days": [
                    {"day": d.day, "turns": d.turns, "input_tokens": d.input_tokens,
                     "output_tokens": d.output_tokens, "cache_read_tokens": d.cache_read_tokens,
                     "cache_write_tokens": d.cache_write_tokens}
                    for d in days
                ],
            }  # fmt: skip
            cached = JSONResponse(body).body
            self._overviews[key] = cached
        return Response(cached, media_type="application/json")

    def feed(self, request: Request) -> JSONResponse:
        workspace = request.query_params.get("workspace") or None
        limit = _int_param(request, "limit", 25, 1, 200)
        with self.reader.connect() as conn:
            return JSONResponse({"traces": queries.feed(conn, workspace, limit)})

    def workspaces(self, request: Request) -> JSONResponse:
        paths = {
            h: w.get("workspace_path") for h, w in self._status_file().get("workspaces", {}).items()
        }
        with self.reader.connect() as conn:
            hashes = queries.workspace_list(conn)
        return JSONResponse(
            {"workspaces": [{"workspace_hash": h, "workspace_path": paths.get(h)} for h in hashes]}
        )

    def conversations(self, request: Request) -> JSONResponse:
        q = (request.query_params.get("q") or "").strip()
        workspace = request.query_params.get("workspace") or None
        limit = _int_param(request, "limit", 50, 1, 500)
        if not store_exists(self.settings):
            return JSONResponse({"conversations": [], "query": q})
        store = open_store(self.settings.store_url, readonly=True)
        try:
            ids: list[str] | None = None
            if q:
                ids = search_conversation_ids(store, q, limit)
                if not ids:
                    return JSONResponse({"conversations": [], "query": q})
            convs = conversations.list_conversations(
                store, workspace=workspace, limit=limit, conversation_ids=ids
            )
        finally:
            store.close()
        return JSONResponse({"conversations": [c.to_json() for c in convs], "query": q})

    def conversation(self, request: Request) -> JSONResponse:
        cid = request.path_params["conversation_id"]
        if not store_exists(self.settings):
            return JSONResponse({"error": f"no conversation {cid}"}, status_code=404)
        store = open_store(self.settings.store_url, readonly=True)
        try:
            got = conversations.get_conversation(store, cid)
        finally:
            store.close()
        if got is None:
            return JSONResponse({"error": f"no conversation {cid}"}, status_code=404)
        conv, turns = got
        body = conv.to_json()
        body["turns"] = [_turn_json(t) for t in turns]
        return JSONResponse(body)

    async def health(self, request: Request) -> JSONResponse:
        now = time.monotonic()
        if self._health is None or now - self._health[0] > HEALTH_CACHE_S:
            self._health = (now, await self._health_facts())
        return JSONResponse(self._health[1])

    # ------------------------------------------------------------------ helpers
    def _status_file(self) -> dict[str, Any]:
        path = self.settings.status_path
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return {"error": f"cannot read {path}: {exc}"}
        return data if isinstance(data, dict) else {}

    async def _health_facts(self) -> dict[str, Any]:
        """What ``blueplane status --json`` says, from the same status file and stream."""
        from blueplane.cli.status import pid_alive
        from blueplane.cli.stream_stats import stream_stats

        snapshot = self._status_file()
        server = snapshot.get("server", {})
        try:
            stream = await asyncio.wait_for(stream_stats(self.settings), timeout=3.0)
        except TimeoutError:
            stream = {"reachable": False, "error": "Redis did not answer within 3 s"}
        return {
            "running": server.get("state") == "running" and pid_alive(server.get("pid")),
            "status_file": str(self.settings.status_path),
            "server": server,
            "stream": stream,
            "components": snapshot.get("components", {}),
            "workspaces": snapshot.get("workspaces", {}),
            "written_at": snapshot.get("written_at"),
            **({"error": snapshot["error"]} if "error" in snapshot else {}),
        }


def _turn_json(t: Any) -> dict[str, Any]:
    return {
        "generation_id": t.generation_id, "prompt": t.prompt, "response": t.response,
        "model": t.model, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
        "cache_read_tokens": t.cache_read_tokens, "cache_write_tokens": t.cache_write_tokens,
        "started_at": t.started_at, "ended_at": t.ended_at, "duration_ms": t.duration_ms,
        "tools": [{"name": x.name, "duration_ms": x.duration_ms, "ok": x.ok} for x in t.tools],
        "sources": list(t.sources),
    }  # fmt: skip


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def create_app(settings: Settings) -> Starlette:
    ui = UiApp(settings)
    routes = [
        Route("/", ui.index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/version", ui.version),
        Route("/api/overview", ui.overview),
        Route("/api/feed", ui.feed),
        Route("/api/tokens", ui.tokens),
        Route("/api/workspaces", ui.workspaces),
        Route("/api/conversations", ui.conversations),
        Route("/api/conversations/{conversation_id:str}", ui.conversation),
        Route("/api/health", ui.health),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={ValueError: _bad_request})
