"""`python -m sandbox.deploy sysext|ignition`: the same as `python -m sandbox deploy ...`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
