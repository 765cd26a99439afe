"""Operator tools over the bus: the monitor, the scenario player, the benchmark and the
process launcher."""
