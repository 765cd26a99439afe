"""L0 storage: the store interface (:mod:`.base`), its backends (SQLite, in-memory), the
row types, and :mod:`.factory`, whose ``open_store`` is the one way to open a store from
what the user typed."""
