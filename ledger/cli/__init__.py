"""Console entry points of the ledger core (bin/ shims call these)."""
