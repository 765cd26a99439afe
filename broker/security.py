"""Who may reach the bus: CURVE keys, the allowlist, and the bind policy.

- **Without CURVE** every socket binds to loopback only (``tcp://127.0.0.1``,
  ``tcp://[::1]``, ``tcp://localhost``) or to ``ipc://`` / ``inproc://``; anything else is
  refused with INSECURE_BIND before a socket is made (:func:`require_local_bind`). The
  ledger's sockets are for the broker alone and are loopback-only always.
- **With CURVE** (``bin/broker --curve-secret keys/broker.key_secret --curve-allow
  keys/allowed/``) the broker's ROUTER front end and its PUB are CURVE servers, and a
  ZAP handler (pyzmq's :class:`zmq.auth.thread.ThreadAuthenticator` on the broker's
  context) admits only the public keys found in the allowlist directory. An unknown key
  fails the handshake: nothing it sends reaches the broker's loop, and it receives
  nothing. Each allowed key is bound to an identity, the stem of its file name
  (``keys/allowed/Liam.key`` -> ``Liam``), which libzmq attaches to every message of
  that connection as the ``User-Id`` property; the broker refuses a request whose
  ``actor`` is not that identity (ACTOR_MISMATCH).

Key files are pyzmq certificates (``zmq.auth.create_certificates``): ``NAME.key`` holds
the public key, ``NAME.key_secret`` both keys and must not be readable by group or
others (mode 0600; ``bin/keygen`` writes it so). This module reads key files from the
paths it is given; the CLIs resolve those paths inside the sandbox (``keys/``) first.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ledger.runtime.sandbox import resolve_key
from schema.errors import CoordinatorError, ErrorCode
from schema.ids import ID_PATTERN

#: ZAP domain of the broker's CURVE sockets (the authenticator answers only for it).
ZAP_DOMAIN: Final = "l3bus"
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
#: User-Id given to a key that passed ZAP but has no name (cannot happen unless the
#: allowlist changes under us); it matches no actor, so every request is refused.
NO_IDENTITY: Final = "?"

log = logging.getLogger("security")
_ACTOR = re.compile(ID_PATTERN)


# --- key files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both keys z85-encoded (40 characters each)."""

    public: bytes
    secret: bytes


def _check_z85(key: bytes | None, path: Path, what: str) -> bytes:
    if key is None or len(key) != 40:
        raise CoordinatorError(ErrorCode.KEY_INVALID,
                               f"{path.name}: no valid CURVE {what} key in the file",
                               field="key", details={"file": path.name})
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        raise CoordinatorError(ErrorCode.KEY_INVALID,
                               f"{path.name}: the CURVE {what} key is not z85 text",
                               field="key", details={"file": path.name}) from None
    return key


def _load(path: Path) -> tuple[bytes | None, bytes | None]:
    if not path.is_file():
        raise CoordinatorError(ErrorCode.FILE_NOT_FOUND, f"{path.name}: no such key file",
                               field="key", details={"file": path.name})
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CoordinatorError(ErrorCode.KEY_INVALID, f"{path.name}: {exc}", field="key",
                               details={"file": path.name}) from None


def load_public_key(path: Path) -> bytes:
    """The z85 public key of a certificate file (``NAME.key``)."""
    public, _secret = _load(path)
    return _check_z85(public, path, "public")


def load_key_pair(path: Path) -> KeyPair:
    """Both keys of a secret certificate file (``NAME.key_secret``), which must not be
    readable by group or others."""
    public, secret = _load(path)
    pair = KeyPair(_check_z85(public, path, "public"), _check_z85(secret, path, "secret"))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CoordinatorError(ErrorCode.KEY_INVALID,
                               f"{path.name}: the secret key is readable by others (mode "
                               f"{mode:04o}); chmod 600 it", field="key",
                               details={"file": path.name})
    return pair


def load_allowlist(directory: Path) -> dict[bytes, str]:
    """``{z85 public key: identity}`` for every ``*.key`` file in ``directory``; the
    identity is the file name's stem, which must be a valid actor id. Refused
    (KEY_INVALID): a bad file, a bad name, one key under two names, an empty directory."""
    if not directory.is_dir():
        raise CoordinatorError(ErrorCode.FILE_NOT_FOUND,
                               f"{directory.name}: the allowlist is not a directory",
                               field="curve_allow")
    allowed: dict[bytes, str] = {}
    for path in sorted(directory.iterdir()):
        if path.name.endswith(SECRET_SUFFIX):
            log.warning("%s: a secret key in the allowlist directory (ignored; it should "
                        "not be here)", path.name)
            continue
        if path.suffix != PUBLIC_SUFFIX:
            continue
        name = path.name[:-len(PUBLIC_SUFFIX)]
        if not _ACTOR.match(name):
            raise CoordinatorError(ErrorCode.KEY_INVALID,
                                   f"{path.name}: {name!r} is not a valid agent name",
                                   field="curve_allow", details={"file": path.name})
        key = load_public_key(path)
        if key in allowed:
            raise CoordinatorError(ErrorCode.KEY_INVALID,
                                   f"{path.name}: the same key is already allowed as "
                                   f"{allowed[key]!r}; one key, one identity",
                                   field="curve_allow", details={"file": path.name})
        allowed[key] = name
    if not allowed:
        raise CoordinatorError(ErrorCode.KEY_INVALID,
                               f"{directory.name}: no public keys (*.key) in the allowlist; "
                               "nobody could connect", field="curve_allow")
    return allowed


# --- the broker side ------------------------------------------------------------------------


class Allowlist:
    """The credentials provider of :meth:`Authenticator.configure_curve_callback`."""

    #: unknown keys remembered so that each is logged once (a refused client reconnects
    #: every 100 ms); bounded, so a flood of keys cannot grow it without limit
    MAX_REMEMBERED: Final = 1024

    def __init__(self, allowed: Mapping[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.refused: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        # Never raise: an exception here would kill the authenticator thread, and with
        # it every future handshake.
        try:
            known = domain == ZAP_DOMAIN and key in self.allowed
            if not known and key not in self.refused:
                if len(self.refused) < self.MAX_REMEMBERED:
                    self.refused.add(key)
                log.warning("refused a CURVE client with an unknown key %s",
                            key.decode("ascii", "replace"))
        except Exception:  # pragma: no cover - defensive
            return False
        return known

    def identity(self, key: bytes) -> str:
        return self.allowed.get(key, NO_IDENTITY)


class CurveAuthenticator(ThreadAuthenticator):
    """ZAP handler in a thread: admits allowed keys and names each one's User-Id."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], allowlist: Allowlist
                 ) -> None:
        super().__init__(context, log=logging.getLogger("zap"))
        self.allowlist = allowlist

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowlist.identity(z85.encode(client_public_key))


@dataclass(frozen=True, slots=True)
class CurveServer:
    """What a broker needs to serve CURVE: its key pair and the allowed agents."""

    keys: KeyPair
    allowed: dict[bytes, str]

    @classmethod
    def load(cls, secret_file: Path, allow_dir: Path) -> CurveServer:
        return cls(load_key_pair(secret_file), load_allowlist(allow_dir))

    def start_authenticator(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> CurveAuthenticator:
        auth = CurveAuthenticator(ctx, Allowlist(self.allowed))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, auth.allowlist)
        return auth

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server in our ZAP domain (before it binds)."""
        sock.curve_server = True
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        sock.zap_domain = ZAP_DOMAIN.encode()


def user_id(frame: zmq.Frame) -> str:
    """The ZAP User-Id of the connection a frame came in on (received with copy=False);
    :data:`NO_IDENTITY` when there is none."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return NO_IDENTITY
    return value if isinstance(value, str) and value else NO_IDENTITY


# --- the agent side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """An agent's key pair and the broker's public key."""

    keys: KeyPair
    server_key: bytes

    @classmethod
    def load(cls, curve_secret: str | os.PathLike[str],
             server_key: str | os.PathLike[str]) -> ClientKeys:
        return cls(load_key_pair(Path(curve_secret)), load_public_key(Path(server_key)))

    @classmethod
    def maybe(cls, curve_secret: str | os.PathLike[str] | None,
              server_key: str | os.PathLike[str] | None) -> ClientKeys | None:
        """Both paths, or neither (no CURVE); one without the other is a usage error."""
        if curve_secret is None and server_key is None:
            return None
        if curve_secret is None or server_key is None:
            raise CoordinatorError(ErrorCode.USAGE_ERROR,
                                   "CURVE needs both curve_secret (this agent's .key_secret) "
                                   "and server_key (the broker's .key)",
                                   field="server_key" if server_key is None else "curve_secret")
        return cls.load(curve_secret, server_key)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the broker (before it connects)."""
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        sock.curve_serverkey = self.server_key


# --- CLI flags (bin/agent, bin/monitor, bin/run_scenario) ---------------------------------


def add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE (when the broker runs with --curve-secret)")
    g.add_argument("--curve-secret", metavar="PATH",
                   help="this agent's secret key file under keys/, e.g. keys/Liam.key_secret "
                   "(bin/keygen Liam), or a directory under keys/ holding NAME.key_secret "
                   "for each agent name used; the broker must allow the matching NAME.key, "
                   "and NAME is then the only actor it accepts on that connection")
    g.add_argument("--server-key", metavar="PATH",
                   help="the broker's public key file under keys/, e.g. keys/broker.key")


class CurvePaths(TypedDict, total=False):
    """Keyword arguments of AgentClient, AsyncAgentClient and EventFollower."""

    curve_secret: Path
    server_key: Path


def client_paths(args: argparse.Namespace, name: str) -> CurvePaths:
    """``{"curve_secret": ..., "server_key": ...}`` for agent ``name`` from the CLI flags,
    resolved inside the sandbox, to pass to AgentClient(**...); ``{}`` without CURVE.
    A ``--curve-secret`` that does not end in ``.key_secret`` is a directory, meaning
    ``DIR/name.key_secret``. One flag without the other is refused (USAGE_ERROR)."""
    secret, server = getattr(args, "curve_secret", None), getattr(args, "server_key", None)
    if secret is None and server is None:
        return {}
    if secret is None or server is None:
        raise CoordinatorError(ErrorCode.USAGE_ERROR,
                               "--curve-secret and --server-key go together",
                               field="server_key" if server is None else "curve_secret")
    if not secret.endswith(SECRET_SUFFIX):  # a directory of secret keys
        secret = f"{secret.rstrip('/')}/{name}{SECRET_SUFFIX}"
    secret_path = resolve_key(secret)
    if not secret_path.is_file():
        raise CoordinatorError(ErrorCode.FILE_NOT_FOUND,
                               f"{secret_path.name}: no such secret key file (make it with "
                               f"bin/keygen {name})", field="curve_secret")
    return {"curve_secret": secret_path, "server_key": resolve_key(server, must_exist=True)}


def identity_of(paths: CurvePaths, default: str) -> str:
    """The agent name a secret key file stands for (``keys/Liam.key_secret`` -> Liam),
    which is the actor to use with it; ``default`` without CURVE."""
    secret = paths.get("curve_secret")
    if secret is None or not secret.name.endswith(SECRET_SUFFIX):
        return default
    return secret.name[:-len(SECRET_SUFFIX)]
