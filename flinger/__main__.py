"""`python -m flinger` runs the CLI."""

from flinger.cli import main

main()
