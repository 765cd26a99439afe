"""``python -m agents.tools.board``: the same as bin/board."""

from agents.tools.board.cli import main

main()
