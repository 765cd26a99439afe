"""``python -m agents.tools.monitor``: the same as bin/monitor."""

from agents.tools.monitor.cli import main

main()
