"""`python -m server`: the same server and flags as `bon serve`."""

from server.cli import main

main()
