"""The ledger process: the single writer behind a ROUTER, group commit, replies after
COMMIT, published events, the read side, start-up checks."""
