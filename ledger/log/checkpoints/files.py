"""Checkpoint I/O: the signing key files and the checkpoint directory.

The ledger's private key is a PKCS#8 PEM file (mode 0600) with its public key beside it
(:func:`public_key_path`); checkpoint files are the JSON of :class:`Checkpoint`, one per
checkpoint, named by :attr:`Checkpoint.file_name`, written atomically and never
overwritten. Reading a directory parses and signature-checks every file and reports a
bad one as a :class:`LoadedCheckpoint` with a problem instead of raising.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.log.checkpoints.format import (
    FILE_SUFFIX,
    Checkpoint,
    CheckpointError,
    CheckResult,
    Verdict,
    key_id_of,
    verify_signature,
)
from schema.errors import CoordinatorError, ErrorCode

DEFAULT_KEY: Final = "keys/ledger-checkpoint.pem"
DEFAULT_DIR: Final = "data/checkpoints"

log = logging.getLogger("ledger.checkpoints")


# --- keys -------------------------------------------------------------------------------


def public_key_path(key_path: Path) -> Path:
    """``keys/x.pem`` -> ``keys/x.pub`` (the public key written beside the private one)."""
    return key_path.with_suffix(".pub") if key_path.suffix == ".pem" else Path(
        f"{key_path}.pub")


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The ledger's signing key at ``path`` (PKCS#8 PEM, unencrypted, mode 0600).

    Created on first use, with its public key written beside it (:func:`public_key_path`);
    a key file readable by group or others is refused, as ssh does.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            _write_new(path, pem, 0o600)
        except FileExistsError:  # created meanwhile by someone else: use theirs
            return load_or_create_key(path)
        log.info("created checkpoint signing key %s (key id %s)", path,
                 key_id_of(key.public_key()))
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: the signing key is readable by others (mode "
                                  f"{mode:04o}); chmod 600 it", field="checkpoint_key")
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: not an unencrypted PEM private key: {exc}",
                                  field="checkpoint_key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: not an Ed25519 key", field="checkpoint_key")
        key = loaded
    pub = public_key_path(path)
    if not pub.exists():
        with contextlib.suppress(FileExistsError):
            _write_new(pub, _public_pem(key.public_key()), 0o644)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    try:
        loaded = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(ErrorCode.FILE_NOT_FOUND, f"{path.name}: {exc.strerror}",
                              field="public_key") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(ErrorCode.KEY_INVALID, f"{path.name}: not a PEM public key: {exc}",
                              field="public_key") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise CheckpointError(ErrorCode.KEY_INVALID, f"{path.name}: not an Ed25519 public key",
                              field="public_key")
    return loaded


# --- checkpoint files -------------------------------------------------------------------


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write one checkpoint file atomically (temp file, fsync, rename, fsync the
    directory). Never overwrites: a name already taken gets a numeric suffix."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(checkpoint.to_dict(), indent=2, ensure_ascii=False) + "\n"
    stem = checkpoint.file_name[:-len(FILE_SUFFIX)]
    tmp = directory / f".{stem}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    n = 0
    while True:
        target = directory / (f"{stem}{FILE_SUFFIX}" if n == 0 else f"{stem}.{n}{FILE_SUFFIX}")
        try:
            os.link(tmp, target)  # atomic, and never replaces an existing file
            break
        except FileExistsError:
            n += 1
    tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """One file of a checkpoint directory: the checkpoint, or why it cannot be used."""

    name: str
    checkpoint: Checkpoint | None
    problem: CheckResult | None = None

    @property
    def usable(self) -> bool:
        return self.checkpoint is not None and self.problem is None


def _seq_from_name(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def load_checkpoint_file(path: Path, public_key: Ed25519PublicKey | None) -> LoadedCheckpoint:
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise CheckpointError(ErrorCode.CHECKPOINT_INVALID, "not a JSON object")
        checkpoint = Checkpoint.from_dict(data, strict=True)
    except (OSError, ValueError, CoordinatorError) as exc:
        message = exc.message if isinstance(exc, CoordinatorError) else str(exc)
        return LoadedCheckpoint(path.name, None, CheckResult(
            Verdict.MALFORMED, _seq_from_name(path.name), f"not a checkpoint: {message}"))
    if public_key is not None:
        bad = verify_signature(checkpoint, public_key)
        if bad is not None:
            return LoadedCheckpoint(path.name, checkpoint,
                                    CheckResult(bad[0], checkpoint.seq, bad[1]))
    return LoadedCheckpoint(path.name, checkpoint)


def load_checkpoints(directory: Path, public_key: Ed25519PublicKey | None
                     ) -> list[LoadedCheckpoint]:
    """Every ``*.json`` file of ``directory``, parsed and signature-checked, by seq."""
    if not directory.is_dir():
        raise CheckpointError(ErrorCode.FILE_NOT_FOUND,
                              f"{directory.name}: no such checkpoint directory",
                              field="checkpoints")
    files = sorted(p for p in directory.iterdir()
                   if p.suffix == FILE_SUFFIX and not p.name.startswith("."))
    loaded = [load_checkpoint_file(p, public_key) for p in files]
    return sorted(loaded, key=lambda lc: (lc.checkpoint.seq if lc.checkpoint
                                          else _seq_from_name(lc.name), lc.name))


def newest_checkpoints(directory: Path, public_key: Ed25519PublicKey | None, n: int = 3
                       ) -> list[LoadedCheckpoint]:
    """The ``n`` highest-seq checkpoint files of ``directory`` (file names start with the
    zero-padded seq), parsed and signature-checked; [] if there is no directory. Reads
    n files however many there are: cheap enough for every start of the ledger."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.iterdir()
                   if p.suffix == FILE_SUFFIX and not p.name.startswith("."))
    return [load_checkpoint_file(p, public_key) for p in files[-n:]]
