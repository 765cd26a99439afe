"""The ledger process: ``process`` (command line), ``serving`` (the single writer behind a
ROUTER, group commit, replies after COMMIT, published events), ``reader`` (the read
side), ``startup`` (start-up checks)."""
