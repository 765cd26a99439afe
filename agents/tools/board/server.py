"""Run the board's app under uvicorn on a socket already bound (so ``--port 0`` works and
the ready line can give the real port), until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import uvicorn

from agents.tools.board.app import create_app
from agents.tools.board.model import BoardModel
from agents.tools.board.service import Board

#: Seconds uvicorn waits for open connections (event streams) at shutdown.
GRACEFUL_SHUTDOWN: Final = 2
#: How often the stop flag is looked at (s).
STOP_POLL: Final = 0.1


async def serve(model: BoardModel, sock: socket.socket, *, token: str | None,
                options: dict[str, Any], on_ready: Callable[[], None],
                stop: threading.Event) -> None:
    """Serve ``model`` (a :class:`Board` made with ``options``) on ``sock``; call
    ``on_ready`` once uvicorn accepts connections; return after ``stop`` is set (or
    uvicorn was told to exit by a signal)."""
    board = Board(model, **options)
    app = create_app(board, token=token)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").propagate = False
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(STOP_POLL)  # uvicorn has no ready callback: poll its flag
    if server.started:
        on_ready()
    while not task.done():
        if stop.is_set() or server.should_exit:
            board.closing = True  # event streams end, so the shutdown need not wait
            server.should_exit = True
        await asyncio.wait({task}, timeout=STOP_POLL)
    await task
