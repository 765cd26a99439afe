"""``python -m agents.sim``: one simulated agent, as bin/agent."""

from agents.sim.cli import main

main()
