"""L3 plans: the rules that turn a command into an event, the group-committing Ledger,
and applying scenario files."""
