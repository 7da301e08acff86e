"""`python -m sandbox.host`: the same as `python -m sandbox serve`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
