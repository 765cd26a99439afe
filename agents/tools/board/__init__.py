"""The live web board (bin/board): plans, items by state, the event stream and the
chain's health on one page, for the people watching the agents.

- :mod:`.model`: :class:`BoardModel`, the pure state of the page (plans, items and links
  by the ledger's rule table, the feed ring buffer, rates, chain/checkpoint/liveness),
  fed the follower's events and alerts; no sockets, no clock.
- :mod:`.pump`: :class:`BoardPump`, the monitor's EventFollower (the same pure follower)
  in a thread, plus a socket monitor that sees broker restarts.
- :mod:`.service`: :class:`Board`, the model, the pump, PING/verify/timeline queries and
  the live subscribers on one asyncio loop.
- :mod:`.app`: the Starlette app (page, JSON endpoints, server-sent events, token rule,
  security headers); :mod:`.server`: uvicorn around it; :mod:`.cli`: bin/board.
- ``static/``: the page (HTML, vanilla JS, CSS), shipped as package data.
"""

from agents.tools.board.cli import main, run_board
from agents.tools.board.model import BoardModel, FollowState

__all__ = ["BoardModel", "FollowState", "main", "run_board"]
