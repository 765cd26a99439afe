"""The ledger core: L0 storage, L1 hash-chained event log, L2 queries, L3 plans.

Everything here works on one database and knows nothing about sockets; the ledger
process (issue: the message bus) drives it through :class:`ledger.plans.Ledger`.
"""
