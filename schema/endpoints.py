"""Where the bus listens by default, and the bind policy every process applies.

Clients need only :data:`DEFAULT_FRONT` and :data:`DEFAULT_PUB` (the broker); the ledger's
two endpoints are for the broker alone. Without CURVE every socket binds to loopback or
``ipc://`` only (:func:`require_local_bind`, INSECURE_BIND otherwise); docs/PROTOCOL.md
section 11.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from schema.errors import CoordinatorError, ErrorCode

#: The broker's ROUTER, where agents send requests.
DEFAULT_FRONT: Final = "tcp://127.0.0.1:5570"
#: The broker's PUB, where monitors and agents follow committed events.
DEFAULT_PUB: Final = "tcp://127.0.0.1:5571"
#: The ledger's ROUTER (the broker connects to it).
DEFAULT_LEDGER: Final = "tcp://127.0.0.1:5580"
#: The ledger's PUB (the broker subscribes to it).
DEFAULT_LEDGER_PUB: Final = "tcp://127.0.0.1:5581"
#: The agent that SEND messages without a ``to`` go to.
COORDINATOR: Final = "Mary"
#: Transports that never leave the machine.
LOCAL_TRANSPORTS: Final = ("ipc", "inproc")
LOOPBACK_NAMES: Final = ("localhost",)


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address; False for anything
    reachable from another machine (tcp://*, tcp://0.0.0.0, a LAN address, a host or
    interface name) and for every other transport."""
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if transport in LOCAL_TRANSPORTS:
        return True
    if transport != "tcp" or ";" in rest:
        return False
    host = rest.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_local_bind(endpoint: str, field: str, *, why: str) -> None:
    """Refuse (INSECURE_BIND) to bind ``endpoint`` unless it stays on this machine."""
    if not is_local_endpoint(endpoint):
        raise CoordinatorError(
            ErrorCode.INSECURE_BIND,
            f"{endpoint}: {why} binds only to loopback (tcp://127.0.0.1:PORT, "
            "tcp://[::1]:PORT) or ipc://", field=field,
            details={"endpoint": endpoint})
