"""The bearer token that guards the management API and non-public functions."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from .config import HostConfig
from .errors import unauthorized

log = logging.getLogger("sandbox.host")
TOKEN_FILE = "token"


class TokenError(ValueError):
    """The configured token file cannot be read or holds no token."""


def load_token(config: HostConfig) -> str:
    """The token: from the config, else from token_file, else from <data_dir>/token
    (created with a random token, mode 0600, on first start). Raises TokenError."""
    if config.token is not None:
        token = config.token.get_secret_value()
        if not token.strip():
            raise TokenError("the token must not be empty")
        return token.strip()
    path = config.token_file
    if path is None:
        path = Path(config.data_dir) / TOKEN_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            log.warning("generated a management token", extra={"token_file": str(path)})
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {str(path)!r}: {exc}") from None
    if not token:
        raise TokenError(f"token file {str(path)!r} is empty")
    return token


class Guard:
    """Checks `Authorization: Bearer <token>` in constant time (both sides hashed first,
    so neither the content nor the length of the token leaks through timing)."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def allows(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, self._digest)

    def check(self, authorization: str | None) -> None:
        """Raises ApiError 401 unless `authorization` carries the token."""
        if not authorization:
            raise unauthorized("this endpoint needs the bearer token (Authorization: Bearer ...)")
        if not self.allows(authorization):
            raise unauthorized("the bearer token is wrong")
