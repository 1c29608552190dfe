"""`python -m tunnelacct` runs the CLI."""

from tunnelacct.cli import main

main()
