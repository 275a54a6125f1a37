"""``python -m router_stream.cli`` runs the command line (used to start workers as subprocesses)."""

from router_stream.cli import main

main()
