"""How the command lines (`python -m sandbox ...`) report an error: one line on stderr."""

from __future__ import annotations

import sys


def print_error(exc: BaseException) -> None:
    """`error: Type (kind): message`; a configuration error as one line of problems."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # one line, not pydantic's multi-line report
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid configuration: {problems}", file=sys.stderr)
        return
    detail = f" ({exc.kind})" if hasattr(exc, "kind") else ""
    print(f"error: {type(exc).__name__}{detail}: {exc}", file=sys.stderr)
