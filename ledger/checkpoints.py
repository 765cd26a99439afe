"""Old import path, kept for auditors' scripts (docs/HASH_CHAIN.md): signed checkpoints
moved to :mod:`ledger.log.checkpoints`. New code imports that."""

from ledger.log.checkpoints import *  # noqa: F403
