"""``python -m carebridge`` runs the command line."""

from carebridge.cli import main

main()
