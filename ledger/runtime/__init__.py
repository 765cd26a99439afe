"""What every long-running process and CLI shares: stop signals, the ready line, logging,
the sandbox allowlist, socket helpers."""
