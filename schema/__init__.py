"""Contracts: what crosses a boundary (wire messages, codec, error codes, id rules,
vocabulary, scenario format, endpoints, SQL and JSON Schema files). A leaf: imports
nothing from ledger, broker or agents."""
