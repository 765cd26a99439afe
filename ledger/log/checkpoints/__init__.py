"""Signed checkpoints: tamper evidence that lives outside the database.

A checkpoint says, signed with the ledger's Ed25519 key: "at time ``ts`` the log ended at
``seq`` with hash ``head_hash``, and the plans/items/links state was ``state_hash``". The
ledger writes one every few seconds when the head moved, and at shutdown, as a JSON file
in a directory outside the database, and publishes it on the event stream (CHECKPOINT).
A database that no longer agrees with a checkpoint was truncated, rolled back or
rewritten, even if every hash in it was recomputed. docs/HASH_CHAIN.md ("Signed
checkpoints") documents the exact signed bytes and the state hash.

The package's modules, along those seams (import the names from here):

- :mod:`.format` (pure: no files, no sockets): :class:`Checkpoint`, :func:`state_hash`,
  :func:`signed_bytes`, :func:`make_checkpoint`, :func:`verify_signature`,
  :func:`check_against` (what a monitor calls for a CHECKPOINT it received).
- :mod:`.files` (key and checkpoint files): :func:`load_or_create_key`,
  :func:`load_public_key`, :func:`write_checkpoint`, :func:`load_checkpoints`.
- :mod:`.audit` (a store against its checkpoints): :func:`verify_with_checkpoints`
  (bin/verify_chain --checkpoints) and the cheaper :func:`check_heads` (no replay; for
  startup and health checks).
- :mod:`.live` (a running bus): the ledger process's periodic :class:`CheckpointWriter`
  and a monitor's :class:`CheckpointWatch` (pure bookkeeping around check_against).
"""

from __future__ import annotations

from ledger.log.checkpoints.audit import check_heads, verify_with_checkpoints
from ledger.log.checkpoints.files import (
    DEFAULT_DIR,
    DEFAULT_KEY,
    LoadedCheckpoint,
    load_checkpoint_file,
    load_checkpoints,
    load_or_create_key,
    load_public_key,
    newest_checkpoints,
    public_key_path,
    write_checkpoint,
)
from ledger.log.checkpoints.format import (
    FILE_FIELDS,
    FILE_SUFFIX,
    FORMAT,
    SIGNED_FIELDS,
    Checkpoint,
    CheckpointError,
    CheckResult,
    Verdict,
    check_against,
    key_id_of,
    make_checkpoint,
    signed_bytes,
    state_document,
    state_hash,
    tables_hash,
    verify_signature,
)
from ledger.log.checkpoints.live import DEFAULT_EVERY, CheckpointWatch, CheckpointWriter

__all__ = [
    "DEFAULT_DIR", "DEFAULT_EVERY", "DEFAULT_KEY", "FILE_FIELDS", "FILE_SUFFIX", "FORMAT",
    "SIGNED_FIELDS", "CheckResult", "Checkpoint", "CheckpointError", "CheckpointWatch",
    "CheckpointWriter", "LoadedCheckpoint", "Verdict", "check_against", "check_heads",
    "key_id_of", "load_checkpoint_file", "load_checkpoints", "load_or_create_key",
    "load_public_key", "make_checkpoint", "newest_checkpoints", "public_key_path",
    "signed_bytes", "state_document", "state_hash", "tables_hash", "verify_signature",
    "verify_with_checkpoints", "write_checkpoint",
]
