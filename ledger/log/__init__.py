"""L1 event log: the hash chain, what each event type does to the state, replay,
verification, integrity checks and signed checkpoints."""
