"""Tests of agents/: the client library, simulated agents, monitor."""
