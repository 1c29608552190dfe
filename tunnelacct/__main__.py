"""`python -m tunnelacct` runs the CLI."""

from tunnelacct.cli import main

if __name__ == "__main__":  # not when a spawned export worker imports this module
    main()
