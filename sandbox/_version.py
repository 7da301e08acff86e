"""The package's version: the one place it is written (pyproject.toml reads it, the
native build compiles it into the extension, and `sandbox._native` checks that the two
agree without the cost of importlib.metadata at import time)."""

__version__ = "0.1.0"
