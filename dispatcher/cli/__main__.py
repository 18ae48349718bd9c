"""``python -m dispatcher.cli``."""

from dispatcher.cli import main

main()
