"""The board's web app (Starlette): one page, its two static files, JSON endpoints and a
server-sent event stream, all GET; nothing here writes anywhere.

| path | answer |
| --- | --- |
| ``/`` | the page (``static/index.html``) |
| ``/static/board.js``, ``/static/board.css`` | its script and style (shipped in the package) |
| ``/api/state`` | :meth:`BoardModel.snapshot`: plans, items, links, feed, status |
| ``/api/status`` | :meth:`BoardModel.status`: the header |
| ``/api/feed?plan_id=&actor=&event_type=&limit=`` | ``{"events": [...]}``, filtered |
| ``/api/plans/{plan_id}`` | ``{"plan", "items", "links"}``; 404 ``UNKNOWN_PLAN`` |
| ``/api/items/{item_id}/timeline`` | ``{"item_id", "events"}``: the L2 task timeline |
| ``/api/stream`` | server-sent events: ``snapshot``, then ``event`` and ``status`` |

The stream's ``event`` messages come one per seq, in order, each once, after the
snapshot's seq (:meth:`Board.subscribe`); ``status`` ones every second and on alerts.

Every answer carries a strict Content-Security-Policy (scripts and styles from this
origin only, no inline script, nothing fetched elsewhere), ``nosniff`` and no-store. With
a token (``--token``, or generated for a non-loopback bind) every request must carry it:
``?token=`` (which also sets an HttpOnly cookie, so the page's own requests carry it),
the cookie, or ``Authorization: Bearer``; otherwise 401. Errors are one JSON object
``{"ok": false, "error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.tools.board.service import Board
from schema.errors import CoordinatorError, ErrorCode
from schema.ids import ID_PATTERN

COOKIE: Final = "board_token"
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE: Final = 15.0
#: Seconds an event stream waits before looking at whether the server is closing.
STREAM_POLL: Final = 0.5
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'; form-action 'none'")
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
STATIC: Final = {"board.js": "text/javascript; charset=utf-8",
                 "board.css": "text/css; charset=utf-8"}


def static_file(name: str) -> bytes:
    """A file of the package's ``static/`` folder (package data)."""
    return (resources.files("agents.tools.board") / "static" / name).read_bytes()


def error(status: int, code: ErrorCode | str, message: str, field: str | None = None
          ) -> JSONResponse:
    err: dict[str, Any] = {"code": str(code), "message": message}
    if field is not None:
        err["field"] = field
    return JSONResponse({"ok": False, "error": err}, status_code=status)


class Guard:
    """ASGI middleware: the token rule and the security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        set_cookie = False
        if self.token is not None:
            request = Request(scope)
            offered = request.query_params.get("token")
            set_cookie = offered is not None and self._ok(offered)
            if not (set_cookie or self._ok(request.cookies.get(COOKIE))
                    or self._ok(_bearer(request.headers.get("authorization")))):
                refusal = error(401, "UNAUTHORIZED", "this board needs its token: open the URL "
                                "in its ready line (…/?token=…) or send Authorization: "
                                "Bearer <token>")
                refusal.raw_headers.extend(SECURITY_HEADERS)
                await refusal(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + list(SECURITY_HEADERS)
                if set_cookie:
                    headers.append((b"set-cookie", self._cookie()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _ok(self, offered: str | None) -> bool:
        assert self.token is not None
        return offered is not None and hmac.compare_digest(offered.encode(),
                                                           self.token.encode())

    def _cookie(self) -> bytes:
        cookie: SimpleCookie = SimpleCookie()
        assert self.token is not None
        cookie[COOKIE] = self.token
        morsel = cookie[COOKIE]
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        morsel["path"] = "/"
        return morsel.OutputString().encode()


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def create_app(board: Board, *, token: str | None = None) -> Starlette:
    """The ASGI app serving ``board`` (started and stopped with the app's lifespan)."""
    index = static_file("index.html")
    files = {name: static_file(name) for name in STATIC}

    async def page(request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return error(404, ErrorCode.FILE_NOT_FOUND, "no such file")
        return Response(files[name], media_type=STATIC[name])

    async def state(request: Request) -> Response:
        return _json(board.model.snapshot(board.clock()))

    async def status(request: Request) -> Response:
        return _json(board.model.status(board.clock()))

    async def feed(request: Request) -> Response:
        q = request.query_params
        limit_text = q.get("limit")
        limit = None
        if limit_text:
            if not limit_text.isdigit() or int(limit_text) < 1:
                return error(400, ErrorCode.INVALID_VALUE, "limit must be an integer >= 1",
                             "limit")
            limit = int(limit_text)
        events = board.model.feed_entries(plan_id=q.get("plan_id"), actor=q.get("actor"),
                                          event_type=q.get("event_type"), limit=limit)
        return _json({"events": events, "seq": board.model.seq})

    async def plan(request: Request) -> Response:
        plan_id = request.path_params["plan_id"]
        found = board.model.plan(plan_id)
        if found is None:
            return error(404, ErrorCode.UNKNOWN_PLAN, "the board has no such plan", "plan_id")
        return _json(found)

    async def timeline(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        if re.fullmatch(ID_PATTERN, item_id) is None:
            return error(400, ErrorCode.INVALID_VALUE, "not an item id", "item_id")
        try:
            events = await board.timeline(item_id)
        except CoordinatorError as exc:
            return JSONResponse({"ok": False, "error": exc.to_dict()}, status_code=503)
        return _json({"item_id": item_id, "events": events})

    async def stream(request: Request) -> Response:
        snapshot, sub = board.subscribe()

        async def messages() -> AsyncIterator[bytes]:
            try:
                yield _sse("snapshot", snapshot)
                idle = 0.0
                while not board.closing:
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), STREAM_POLL)
                    except TimeoutError:
                        idle += STREAM_POLL
                        if idle >= KEEPALIVE:
                            idle = 0.0
                            yield b": keep-alive\n\n"
                        continue
                    if message is None:  # dropped: the page reconnects
                        return
                    idle = 0.0
                    yield _sse(*message)
            finally:
                board.unsubscribe(sub)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/api/state", state),
        Route("/api/status", status), Route("/api/feed", feed),
        Route("/api/plans/{plan_id:path}", plan),
        Route("/api/items/{item_id:path}/timeline", timeline),
        Route("/api/stream", stream),
    ]

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await board.start()
        try:
            yield
        finally:
            await board.stop()

    app = Starlette(routes=routes, lifespan=contextlib.asynccontextmanager(lifespan))
    app.add_middleware(Guard, token=token)
    return app


def _json(data: dict[str, Any]) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (orjson output has no newline, so one ``data:`` line)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
