"""The agent client library: what any agent script imports to talk to the bus.

``AgentClient`` (blocking, :mod:`agents.client.sync`) and ``AsyncAgentClient`` (asyncio,
:mod:`agents.client.aio`) speak the protocol of docs/PROTOCOL.md over one DEALER socket
and offer the same methods: both mount every request of
:class:`agents.client.core.Requests`, and both follow the same retry decisions
(:class:`agents.client.core.LazyPirate`).

Every request carries an id (for commands, the command_id); replies are matched by that
id, so a late reply to an earlier attempt is recognised and dropped. A request that gets
no reply within ``timeout`` is re-sent with the same id, up to ``retries`` times (zguide
"Lazy Pirate"): the ledger applies a command_id at most once, so a retry can never apply
a command twice. LEDGER_UNAVAILABLE and BUSY answers are retried the same way, after a
short back-off.

With ``curve_secret`` (this agent's ``.key_secret``) and ``server_key`` (the broker's
``.key``) the socket is a CURVE client, for a broker started with ``--curve-secret``;
``actor`` must then be the name the broker allows that key under.

Replies are :class:`schema.wire.Reply`; a command's outcome is in ``status``
(APPLIED, CONFLICT or REJECTED). Queries return their ``result`` or raise
:class:`schema.errors.CoordinatorError`.
"""

from agents.client.aio import AsyncAgentClient
from agents.client.core import (
    RETRYABLE,
    Call,
    LazyPirate,
    Request,
    Requests,
    RetryPolicy,
    is_retryable,
    new_id,
    result_of,
)
from agents.client.sync import AgentClient

__all__ = ["RETRYABLE", "AgentClient", "AsyncAgentClient", "Call", "LazyPirate", "Request",
           "Requests", "RetryPolicy", "is_retryable", "new_id", "result_of"]
