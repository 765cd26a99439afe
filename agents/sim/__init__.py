"""The simulated agents, one process each: ``bin/agent --name Liam|Mary|Codex ...``.

Roles (from the name unless ``--role`` says otherwise):

- **Liam** (planner) creates the plan and fills it with ``--items`` items, ids
  ``<plan>-I001``...: one in three is assigned straight to a worker, one in three is left
  unassigned in a shared pool, and one in three is asked of Mary (SEND kind "request", no
  recipient). While the work goes on he re-prioritises each item the moment he sees it
  go IN_PROGRESS, using the version from that event: he and the worker moving it to DONE
  both write against the same version, so exactly one of them meets a conflict.
- **Mary** (coordinator) registers with HELLO, turns every request into an item assigned
  to a worker (round-robin over ``--workers``) and acknowledges it to the sender.
- **Codex** (worker; any other name works too, and several processes may share one)
  takes items that are TODO and assigned to its name or to nobody, and works them
  TODO -> IN_PROGRESS -> DONE with expected versions. It acts on what the event stream
  told it, so two workers that saw the same item added both claim it with version 1: one
  wins, the loser gets CONFLICT, re-reads, sees the item taken and moves on. A conflict on
  its own item (Liam's re-prioritisation) is retried with the fresh version
  (``AgentClient.retry_on_conflict``).

Every agent follows the broker's event stream (SUB) to wake up, and re-reads the plan
(list-items) whenever the stream has been quiet for a second, so a lost event only costs
time. Before Liam adds items he waits for a "ready" message from Mary and from every
worker, each sent once its subscription is live, so all of them see every item added.

Coordination ends when all ``--items`` items of the plan are DONE; each agent then
prints ONE JSON object on stdout ({"ok", "agent", "commands", "applied", "conflicts_met",
"conflicts_resolved", "rejected", "items_done", ...}) and exits 0, or 1 after an error,
``--timeout`` or SIGINT/SIGTERM (the JSON then has "ok": false and "error").

:func:`run_agents` starts Liam, Mary and the workers as child processes and merges
their reports; it is what ``bin/run_scenario --agents`` runs.

The package: :mod:`.agent` (the loop every role shares), :mod:`.roles` (Liam, Mary,
workers), :mod:`.runner` (:func:`run_agents`), :mod:`.cli` (``bin/agent``;
``python -m agents.sim`` runs it too).
"""

from agents.sim.agent import (
    DEFAULT_TIMEOUT,
    DEFAULT_WORKER,
    MAX_CONFLICT_RETRIES,
    PLANNER,
    RESYNC_AFTER,
    ROLES,
    Config,
    ItemView,
    SimAgent,
    Stopped,
    item_ids,
    role_of,
)
from agents.sim.cli import main, parse_args
from agents.sim.roles import AGENTS, Coordinator, Planner, Worker
from agents.sim.runner import run_agents

__all__ = [
    "AGENTS", "DEFAULT_TIMEOUT", "DEFAULT_WORKER", "MAX_CONFLICT_RETRIES", "PLANNER",
    "RESYNC_AFTER", "ROLES", "Config", "Coordinator", "ItemView", "Planner", "SimAgent",
    "Stopped", "Worker", "item_ids", "main", "parse_args", "role_of", "run_agents",
]
