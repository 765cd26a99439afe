"""Whole-bus tests: real ledger and broker processes, faults, crashes, raw clients."""
