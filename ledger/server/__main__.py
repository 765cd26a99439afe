"""``python -m ledger.server``: the ledger process (same as ``bin/ledger``)."""

from ledger.server.process import main

main()
