"""``python -m port`` runs the porter CLI."""

from port.cli import main

main()
