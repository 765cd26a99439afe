"""ZeroMQ contexts and sockets a test opens, closed at teardown so nothing can hang.

As pyzmq's own test suite does (its ``tests/conftest.py``: ``contexts``/``sockets``
fixtures, ``term_context``): every socket a test makes through :class:`ZmqTracker` is
closed with linger 0, then each context is destroyed (``Context.destroy(linger=0)``
also closes any socket made on it directly) on a helper thread with a time limit. A
test that fails with messages still queued, or a socket still open, therefore ends
at once instead of blocking ``zmq_ctx_term`` forever. The fixtures ``zmq_ctx``,
``zmq_socket`` and ``module_zmq_ctx`` in ``tests/conftest.py`` hand them out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final, TypeAlias

import zmq

Context: TypeAlias = "zmq.Context[zmq.Socket[bytes]]"
Socket: TypeAlias = "zmq.Socket[bytes]"
#: The ``zmq_socket`` fixture: ``zmq_socket(zmq.SUB)`` is a tracked socket with linger 0.
SocketFactory: TypeAlias = Callable[[int], Socket]

#: Seconds a context may take to terminate at teardown before the test errors.
TERM_TIMEOUT: Final = 10.0


def destroy_context(ctx: Context, timeout: float = TERM_TIMEOUT) -> None:
    """Close every socket of ``ctx`` with linger 0 and terminate it, on a thread; raises
    RuntimeError if that takes more than ``timeout`` seconds (a socket still in use by
    another thread)."""
    t = threading.Thread(target=ctx.destroy, kwargs={"linger": 0}, daemon=True,
                         name="zmq-term")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RuntimeError(f"ZeroMQ context {ctx} did not terminate in {timeout}s")


class ZmqTracker:
    """Contexts and sockets made for one test (or one module), closed by :meth:`close`."""

    def __init__(self) -> None:
        self.contexts: list[Context] = []
        self.sockets: list[Socket] = []

    def context(self) -> Context:
        """A new context, destroyed at :meth:`close`."""
        ctx: Context = zmq.Context()
        self.contexts.append(ctx)
        return ctx

    def socket(self, kind: int, ctx: Context | None = None) -> Socket:
        """A socket of ``kind`` (zmq.DEALER, zmq.SUB, ...) on ``ctx`` (default: the first
        context made here, made now if there is none), with linger 0."""
        if ctx is None:
            ctx = self.contexts[0] if self.contexts else self.context()
        sock = ctx.socket(kind)
        sock.linger = 0
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        """Close every tracked socket (linger 0), then destroy every tracked context."""
        for sock in self.sockets:
            sock.close(linger=0)
        self.sockets.clear()
        error: RuntimeError | None = None
        for ctx in self.contexts:
            try:
                destroy_context(ctx)
            except RuntimeError as exc:  # keep closing the others
                error = error or exc
        self.contexts.clear()
        if error is not None:
            raise error
