"""Tokens: the admin token from the configuration, and scoped tokens made and revoked
through the API (POST/GET/DELETE /tokens), stored hashed.

Scopes (each includes the ones below it):

    admin    everything, tokens included
    deploy   the functions' management (deploy, PATCH, rollback, delete, read, logs)
             and invoking any function
    invoke   invoking one function (named when the token is made)

A scoped token reads `sbx.<id>.<secret>`; the host keeps its SHA-256 only
(<data_dir>/tokens.json, mode 0600) and compares digests with `hmac.compare_digest`. The
secret is 32 random bytes, so a plain hash is enough (a password hash would only slow
every request: there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import HostConfig
from .errors import ApiError, forbidden, unauthorized
from .manifest import NAME_PATTERN

log = logging.getLogger("sandbox.host")
TOKEN_FILE = "token"
TOKENS_FILE = "tokens.json"
MAX_TOKENS = 10_000
Scope = Literal["admin", "deploy", "invoke"]
_RANK = {"invoke": 0, "deploy": 1, "admin": 2}


class TokenError(ValueError):
    """The configured token file cannot be read or holds no token."""


def load_token(config: HostConfig) -> str:
    """The admin token: from the config, else from token_file, else from
    <data_dir>/token (created with a random token, mode 0600, on first start). Raises
    TokenError."""
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
        raise TokenError(f"cannot read token file {str(path)!r}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"token file {str(path)!r} is empty")
    return token


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class TokenSpec(BaseModel):
    """POST /tokens: what a new token may do."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scope: Scope = Field(description="admin, deploy, or invoke (one function)")
    function: str | None = Field(
        None, pattern=NAME_PATTERN, description="for scope invoke: the function it may invoke"
    )
    description: str = Field("", max_length=200)


class TokenRecord(BaseModel):
    """A scoped token as stored (and listed, without `sha256`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    scope: Scope
    function: str | None = None
    description: str = ""
    created_at: float
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def public(self) -> dict[str, object]:
        return self.model_dump(exclude={"sha256"})


class Caller:
    """Who made a request: a scope, and (invoke) the one function it may invoke."""

    __slots__ = ("scope", "function", "token_id")

    def __init__(self, scope: Scope, function: str | None, token_id: str | None) -> None:
        self.scope, self.function, self.token_id = scope, function, token_id

    def may(self, need: Scope, function: str | None = None) -> bool:
        if _RANK[self.scope] < _RANK[need]:
            return False
        return self.scope != "invoke" or function == self.function


class Guard:
    """Identifies callers by `Authorization: Bearer <token>`, in constant time per
    candidate (digests compared with hmac.compare_digest)."""

    def __init__(self, token: str) -> None:
        self._admin = _digest(token)
        self._tokens: dict[str, TokenRecord] = {}
        self._path: Path | None = None
        self._write: Callable[[Path, bytes], None] | None = None

    # -- scoped tokens -------------------------------------------------------------------

    def open(self, path: Path, write: Callable[[Path, bytes], None]) -> None:
        """Loads the scoped tokens from `path`; `write(path, data)` stores them
        durably. A file that cannot be read is logged and ignored (the admin token
        still works)."""
        self._path, self._write = path, write
        if not path.exists():
            return
        try:
            docs = json.loads(path.read_bytes())
            records = [TokenRecord.model_validate(d) for d in docs]
        except (OSError, ValueError, ValidationError, TypeError) as exc:
            log.error("cannot read the scoped tokens; only the admin token works",
                      extra={"error": str(exc)[:200]})  # fmt: skip
            return
        self._tokens = {r.id: r for r in records}

    def _save(self) -> None:
        if self._path is None or self._write is None:
            raise ApiError(503, "Starting", "the host is starting")
        data = json.dumps([r.model_dump() for r in self._tokens.values()], indent=1).encode()
        try:
            self._write(self._path, data)
        except OSError as exc:
            raise ApiError(500, "StoreError", f"cannot store the tokens: {exc.strerror}") from exc

    def create(self, spec: TokenSpec) -> tuple[TokenRecord, str]:
        """A new token: its record, and the token itself (shown once)."""
        if spec.scope == "invoke" and spec.function is None:
            raise ApiError(400, "BadRequest", "an invoke token names its function")
        if spec.scope != "invoke" and spec.function is not None:
            raise ApiError(400, "BadRequest", "only an invoke token names a function")
        if len(self._tokens) >= MAX_TOKENS:
            raise ApiError(400, "BadRequest", f"at most {MAX_TOKENS} tokens; revoke some")
        token_id = secrets.token_hex(8)
        token = f"sbx.{token_id}.{secrets.token_urlsafe(32)}"
        record = TokenRecord(
            id=token_id,
            scope=spec.scope,
            function=spec.function,
            description=spec.description,
            created_at=time.time(),
            sha256=_digest(token).hex(),
        )
        self._tokens[token_id] = record
        try:
            self._save()
        except BaseException:
            del self._tokens[token_id]
            raise
        return record, token

    def revoke(self, token_id: str) -> bool:
        record = self._tokens.pop(token_id, None)
        if record is None:
            return False
        try:
            self._save()
        except BaseException:
            self._tokens[token_id] = record
            raise
        return True

    def list(self) -> list[TokenRecord]:
        return sorted(self._tokens.values(), key=lambda r: r.created_at)

    # -- checking ------------------------------------------------------------------------

    def identify(self, authorization: str | None) -> Caller | None:
        """The caller a header stands for; None for no or a wrong token."""
        if not authorization:
            return None
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = credentials.strip()
        given = _digest(token)
        if hmac.compare_digest(given, self._admin):
            return Caller("admin", None, None)
        if token.startswith("sbx."):
            record = self._tokens.get(token[4:20])
            if record is not None and hmac.compare_digest(given, bytes.fromhex(record.sha256)):
                return Caller(record.scope, record.function, record.id)
        return None

    def allows(self, authorization: str | None, need: Scope = "admin") -> bool:
        caller = self.identify(authorization)
        return caller is not None and caller.may(need)

    def check(
        self, authorization: str | None, need: Scope = "admin", function: str | None = None
    ) -> Caller:
        """The caller; raises ApiError 401 without a valid token, 403 if its scope does
        not cover `need` (for `function`)."""
        if not authorization:
            raise unauthorized("this endpoint needs a bearer token (Authorization: Bearer ...)")
        caller = self.identify(authorization)
        if caller is None:
            raise unauthorized("the bearer token is wrong")
        if not caller.may(need, function):
            what = f"{need} on {function!r}" if function else need
            raise forbidden(f"the token's scope ({caller.scope}) does not allow {what}")
        return caller
