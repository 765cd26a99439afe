"""The ledger process's read side: QUERY, REPLAY and PING, answered on a thread of their
own from a read-only store, so that reads never stall the writer.

The main loop forwards each read request, frames as received, over an inproc PAIR
socket (:data:`READER_ENDPOINT`); :func:`serve_reads` answers on the same socket, and
the main loop sends the answer back out through its ROUTER.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from ledger.log.verify import verify_store
from ledger.queries import reads as queries
from ledger.storage.base import Store
from schema import wire
from schema.errors import CoordinatorError, ErrorCode

READER_ENDPOINT = "inproc://ledger-reader"

log = logging.getLogger("ledger")


def answer_query(store: Store, msg: Any,
                 status: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one read request (QUERY, REPLAY or PING) against the read-only store.
    ``status``: what PING reports besides the head (``startup_check``, ``writer``)."""
    if isinstance(msg, wire.Ping):
        seq, head = store.head()
        return {"ledger_up": True, "head_seq": seq, "head_hash": head,
                **(status() if status is not None else {})}
    if isinstance(msg, wire.Replay):
        events = [e.to_row() for e in store.iter_events(msg.from_seq, msg.to_seq,
                                                        limit=msg.limit)]
        return {"events": events, "head_seq": store.head()[0]}
    params = msg.params

    def param(name: str) -> str:
        value = params.get(name)
        if value is not None and not isinstance(value, str):
            raise CoordinatorError(ErrorCode.INVALID_TYPE, f"params.{name}: must be a string",
                                   field=f"params.{name}")
        if not value:
            raise CoordinatorError(ErrorCode.MISSING_FIELD, f"params.{name}: required",
                                   field=f"params.{name}")
        if "\x00" in value:  # as commands (schema.commands): alike on every backend
            raise CoordinatorError(ErrorCode.INVALID_VALUE, f"params.{name}: must not "
                                   "contain NUL characters (U+0000)", field=f"params.{name}")
        return value

    match msg.query:
        case "list-plans":
            return queries.list_plans(store)
        case "show-plan":
            return queries.show_plan(store, param("plan_id"))
        case "list-items":
            return queries.list_items(store, param("plan_id"))
        case "get-plan":
            plan = store.get_plan(param("plan_id"))
            return {"plan": plan.to_dict() if plan else None}
        case "get-item":
            item = store.get_item(param("item_id"))
            return {"item": item.to_dict() if item else None}
        case "session-timeline":
            return queries.timeline(store, "session_id", param("session_id"))
        case "task-timeline":
            return queries.timeline(store, "task_id", param("task_id"))
        case "plan-timeline":
            return queries.timeline(store, "plan_id", param("plan_id"))
        case "list-sessions":
            return queries.list_sessions(store)
        case "summary":
            return queries.summary(store)
        case "verify":
            return verify_store(store)
    raise CoordinatorError(ErrorCode.UNKNOWN_QUERY,
                           f"unknown query {msg.query!r}; expected one of "
                           f"{', '.join(wire.QUERY_NAMES)}", field="query")


def serve_reads(ctx: zmq.Context[zmq.Socket[bytes]], store: Store, stop: threading.Event,
                status: Callable[[], dict[str, Any]] | None = None) -> None:
    """The reader thread: answer each request from the main loop until ``stop`` is set,
    then close ``store``."""
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 0
    sock.connect(READER_ENDPOINT)
    try:
        while not stop.is_set():
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            route, body = frames[:2], frames[2:]
            request_id = wire.header_id(body) or "unknown"
            try:
                msg = wire.decode(body)
                request_id = msg.id
                reply = wire.Reply(id=request_id, ok=True,
                                   result=answer_query(store, msg, status))
            except CoordinatorError as exc:
                reply = wire.error_reply(request_id, exc)
            except Exception as exc:  # a bug must not kill the reader
                log.exception("query failed")
                reply = wire.error_reply(request_id, CoordinatorError(
                    ErrorCode.INTERNAL_ERROR, f"query failed: {exc}"))
            sock.send_multipart([*route, *wire.encode(reply)])
    finally:
        sock.close()
        store.close()
