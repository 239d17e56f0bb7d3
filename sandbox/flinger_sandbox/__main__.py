"""`python -m flinger_sandbox` runs the flinger-sandbox command line."""

from flinger_sandbox.cli import main

main()
