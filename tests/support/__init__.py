"""Harness modules shared by the tests (helpers, load generators, tamper campaigns)."""
