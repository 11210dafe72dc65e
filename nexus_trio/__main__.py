"""``python -m nexus_trio`` runs the ``nexus`` command."""

from nexus_trio.cli import main

main()
