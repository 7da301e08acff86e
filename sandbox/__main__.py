"""`python -m sandbox`: the command-line interface (see sandbox/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
