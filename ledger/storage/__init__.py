"""L0 storage: the store interface, its backends (SQLite, in-memory) and the row types."""
