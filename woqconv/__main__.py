"""``python -m woqconv`` runs the command line."""

from .cli import main

main()
