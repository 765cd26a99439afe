"""bin/keygen NAME: make a CURVE key pair for an agent or for the broker.

Writes ``<dir>/NAME.key`` (the public key, mode 0644: give it to the other side) and
``<dir>/NAME.key_secret`` (both keys, mode 0600: keep it) with pyzmq's
``zmq.auth.create_certificates``, and prints one JSON object with the paths. The
directory is under the sandbox's ``keys/`` (default ``keys``). An existing key is never
overwritten unless ``--force`` is given.

The files are made in a private temporary directory beside the target and then linked
into place, so a secret key is never readable by others, not even for a moment, and
two runs at once cannot overwrite each other.

To allow an agent on a broker started with ``--curve-allow keys/allowed/``, copy its
``NAME.key`` there: the file's name (``Liam.key``) is the identity the broker binds to
that key, and the only ``actor`` it accepts from it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

import zmq.auth

from broker.security import PUBLIC_SUFFIX, SECRET_SUFFIX, load_key_pair
from ledger.cli.common import emit, parser, run
from ledger.runtime.sandbox import KEYS_DIR, resolve_key, sandbox_root
from schema.errors import CoordinatorError, ErrorCode

#: An actor id (ledger.commands.ID_PATTERN) that is also a plain file name.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def make_key_pair(name: str, directory: str = KEYS_DIR, *, force: bool = False
                  ) -> tuple[Path, Path]:
    """Create ``directory/name.key`` and ``directory/name.key_secret``; return their
    resolved paths. ``directory`` is relative to the sandbox root, under ``keys/``."""
    if not NAME_PATTERN.match(name) or name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        raise CoordinatorError(ErrorCode.INVALID_VALUE,
                               f"{name!r} is not a valid name: letters, digits and . _ @ + -, "
                               "starting with a letter or digit, at most 128", field="name")
    base = directory.rstrip("/")
    public = resolve_key(f"{base}/{name}{PUBLIC_SUFFIX}")
    secret = resolve_key(f"{base}/{name}{SECRET_SUFFIX}")
    existing = [p for p in (public, secret) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CoordinatorError(ErrorCode.FILE_EXISTS,
                               f"{existing[0].name} already exists; use --force to replace "
                               "the key pair (agents and brokers holding the old public key "
                               "will be refused)", field="name",
                               details={"file": str(existing[0].relative_to(sandbox_root()))})
    public.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keygen-", dir=public.parent))  # mode 0700
    try:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        if force:
            os.replace(made_secret, secret)
            os.replace(made_public, public)
        else:
            _link_new(made_secret, secret)
            try:
                _link_new(made_public, public)
            except CoordinatorError:
                secret.unlink()
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public, secret


def _link_new(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # atomic, and never replaces an existing file
    except FileExistsError:
        raise CoordinatorError(ErrorCode.FILE_EXISTS,
                               f"{dst.name} was created meanwhile; use --force to replace it",
                               field="name") from None


def _main(argv: list[str]) -> int:
    p = parser("keygen", "Make a CURVE key pair: NAME.key (public; copy it to the broker's "
               "--curve-allow directory, or to the agents for the broker's own key) and "
               "NAME.key_secret (secret, mode 0600). Prints the paths as JSON.",
               epilog="example:\n  bin/keygen broker && bin/keygen Liam\n"
               "  mkdir -p keys/allowed && cp keys/Liam.key keys/allowed/\n"
               "  bin/broker --curve-secret keys/broker.key_secret --curve-allow keys/allowed/")
    p.add_argument("name", metavar="NAME",
                   help="the agent's name (its actor id on the bus), or e.g. 'broker'")
    p.add_argument("--dir", default=KEYS_DIR, metavar="DIR",
                   help=f"where to write, under {KEYS_DIR}/ (default {KEYS_DIR})")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = p.parse_args(argv)
    public, secret = make_key_pair(args.name, args.dir, force=args.force)
    pair = load_key_pair(secret)
    root = sandbox_root()
    emit({"ok": True, "name": args.name, "public_key": str(public.relative_to(root)),
          "secret_key": str(secret.relative_to(root)),
          "public_key_z85": pair.public.decode("ascii")})
    return 0


def main() -> None:
    sys.exit(run(_main))
