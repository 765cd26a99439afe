"""The gateway: ZeroMQ ingress -> normalise -> route (see docs/ARCHITECTURE.md)."""
