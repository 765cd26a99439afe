"""Tests of ledger/: storage, log, plans, queries, the ledger process and its CLIs."""
