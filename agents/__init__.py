"""Agent side of the bus: the client library and the simulated agents (see docs/ARCHITECTURE.md)."""
