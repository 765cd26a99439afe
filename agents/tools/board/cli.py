"""bin/board: serve the live web board. Parse the flags, apply the bind policy, bind the
HTTP socket, start uvicorn with the board's app, print one ready line.

Bind policy (as the broker's, docs/PROTOCOL.md section 11): loopback by default; any
other address needs CURVE keys to reach the bus (``--curve-secret``/``--server-key``)
and a token for the page (``--token``, or one is generated and printed in the ready
line); without keys it is refused with INSECURE_BIND. Exit status: 0 after SIGINT or
SIGTERM, 2 on a usage or bind error (the failure line).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys
from typing import Any

from agents.tools.board.model import FEED_SIZE, BoardModel
from agents.tools.board.service import PING_EVERY, VERIFY_EVERY
from agents.tools.monitor.follower import DEFAULT_DEAD_AFTER, DEFAULT_REQUEST_TIMEOUT
from broker.security import ClientKeys, add_client_args, client_paths, identity_of
from ledger.log.checkpoints import load_public_key
from ledger.runtime.sandbox import resolve_key
from ledger.runtime.service import (
    add_version_arg,
    announce,
    install_stop_signals,
    positive_float,
    positive_int,
)
from schema.endpoints import DEFAULT_FRONT, DEFAULT_PUB, is_local_endpoint
from schema.errors import CoordinatorError, ErrorCode

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470

DESCRIPTION = """Serve a live web board of the bus: one page with a board per plan (TODO,
IN_PROGRESS, BLOCKED, DONE), a live event feed, and the health of the stream (hash chain
as the board checked it, the ledger's own verification, signed checkpoints, broker and
ledger liveness, command and conflict rates). It follows the broker like bin/monitor
(from seq 1, in seq order, each event once, chain checked) and only reads: it sends PING
and QUERY, never a command.

Prints one JSON ready line once it serves: {"ok": true, "ready": true, "role": "board",
"url": ..., ...}; open the url (with ?token=... when the line has a token)."""

EPILOG = """examples:
  bin/board                                  # http://127.0.0.1:8470/ for the default bus
  bin/board --port 0                         # a free port (the ready line says which)
  bin/board --broker tcp://127.0.0.1:5570 --pub tcp://127.0.0.1:5571
  bin/board --host 0.0.0.0 --curve-secret keys/board.key_secret --server-key keys/broker.key
                                             # reachable from other machines: CURVE + token"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="board", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default=DEFAULT_FRONT, metavar="ADDR",
                   help=f"the broker's front end (default {DEFAULT_FRONT})")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"the broker's PUB endpoint (default {DEFAULT_PUB})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address the web server binds (default {DEFAULT_HOST}); anything "
                   "but loopback needs CURVE keys and a token")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--token", metavar="TOKEN",
                   help="require this token on every request (?token=, a cookie, or "
                   "Authorization: Bearer); generated when binding beyond loopback")
    p.add_argument("--checkpoint-key", metavar="PATH",
                   help="the ledger's checkpoint public key (keys/ledger-checkpoint.pub): "
                   "check the signature of every CHECKPOINT on the stream")
    p.add_argument("--feed-size", type=positive_int, default=FEED_SIZE, metavar="N",
                   help=f"events kept in the live feed (default {FEED_SIZE})")
    p.add_argument("--verify-every", type=float, default=VERIFY_EVERY, metavar="S",
                   help="ask the ledger to verify its whole chain (QUERY verify) every S "
                   f"seconds when the head moved (default {VERIFY_EVERY:g}; 0: never)")
    p.add_argument("--ping-every", type=positive_float, default=PING_EVERY, metavar="S",
                   help=f"PING the broker every S seconds (default {PING_EVERY:g})")
    p.add_argument("--dead-after", type=positive_float, default=DEFAULT_DEAD_AFTER,
                   metavar="S", help="report the broker silent after S seconds without a "
                   f"heartbeat (default {DEFAULT_DEAD_AFTER})")
    p.add_argument("--request-timeout", type=positive_float, default=DEFAULT_REQUEST_TIMEOUT,
                   metavar="S", help="ask again when a REPLAY gets no answer in S seconds "
                   f"(default {DEFAULT_REQUEST_TIMEOUT})")
    add_client_args(p)
    add_version_arg(p)
    return p


def bind_policy(host: str, port: int, *, curve: bool, token: str | None
                ) -> tuple[str | None, bool]:
    """(the token to require or None, whether it was generated here).

    Loopback: the token if one was given. Anything else: refused (INSECURE_BIND)
    without CURVE keys for the bus; the given token, or a new one."""
    shown = f"[{host}]" if ":" in host else host
    if is_local_endpoint(f"tcp://{shown}:{port}"):
        return token, False
    if not curve:
        raise CoordinatorError(
            ErrorCode.INSECURE_BIND, f"{host}: the board binds beyond loopback only with "
            "CURVE keys for the bus (--curve-secret, --server-key); a token is then "
            "required on every request", field="host", details={"host": host})
    if token:
        return token, False
    return secrets.token_urlsafe(24), True


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket (BIND_FAILED if the address cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise CoordinatorError(ErrorCode.BIND_FAILED,
                               f"cannot bind {host}:{port}: {exc.strerror or exc}",
                               field="port", details={"host": host, "port": port}) from None


def run_board(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise CoordinatorError(ErrorCode.USAGE_ERROR, "--port must be 0..65535",
                                   field="port")
        curve = client_paths(args, "board")
        ClientKeys.maybe(curve.get("curve_secret"), curve.get("server_key"))  # KEY_INVALID
        token, generated = bind_policy(args.host, args.port, curve=bool(curve),
                                       token=args.token)
        checkpoint_key = (load_public_key(resolve_key(args.checkpoint_key, must_exist=True))
                          if args.checkpoint_key else None)
        try:
            from agents.tools.board.server import serve
        except ImportError as exc:  # the optional web stack is not installed
            raise CoordinatorError(ErrorCode.USAGE_ERROR, f"the board needs the 'board' "
                                   f"extra (pip install 'l3-coordinator[board]'): {exc}"
                                   ) from None
        sock = bind_socket(args.host, args.port)
    except CoordinatorError as exc:
        announce({"ok": False, "error": exc.to_dict()})
        return 2
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    ready: dict[str, Any] = {
        "ok": True, "ready": True, "role": "board", "url": f"http://{shown}:{port}/",
        "host": args.host, "port": port, "broker": args.broker, "pub": args.pub,
        "token_required": token is not None, "token": token if generated else None,
        "curve": bool(curve)}
    stop = install_stop_signals()
    model = BoardModel(feed_size=args.feed_size, signature_checked=checkpoint_key is not None,
                       broker=args.broker, pub=args.pub)
    options = {"front": args.broker, "pub": args.pub, "actor": identity_of(curve, "board"),
               "dead_after": args.dead_after, "request_timeout": args.request_timeout,
               "checkpoint_key": checkpoint_key, "ping_every": args.ping_every,
               "verify_every": max(0.0, args.verify_every), **curve}
    asyncio.run(serve(model, sock, token=token, options=options,
                      on_ready=lambda: announce(ready), stop=stop))
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_board(argv))


if __name__ == "__main__":
    main()
