"""`HostState`: what the endpoints share (one per app), reached via `request.app`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .auth import Guard
from .config import HostConfig
from .deployment import Deployment
from .errors import ApiError, not_found, unauthorized
from .metrics import Metrics
from .registry import Registry


@dataclass(eq=False)
class HostState:
    config: HostConfig
    metrics: Metrics
    registry: Registry
    guard: Guard
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.registry.started and not self.draining

    def begin_drain(self) -> None:
        """The server stops accepting: /readyz answers 503, new invocations too."""
        self.draining = True

    def authorize(self, request: Request) -> None:
        """Raises ApiError 401 unless the request carries the token."""
        self.guard.check(request.headers.get("authorization"))

    def invocable(self, authorization: str | None, name: str) -> Deployment:
        """The deployment `name` if a request with this Authorization header may invoke
        it. Raises ApiError: 401 without the token for a non-public or unknown function
        (so that existence does not leak), 404, 503 while draining."""
        dep = self.registry.get(name)
        if dep is None or not dep.spec.public:
            header = authorization
            if not self.guard.allows(header):
                raise unauthorized(
                    "the bearer token is wrong"
                    if header
                    else "this function is not public: "
                    "invoking it needs the bearer token (Authorization: Bearer ...)"
                )
        if dep is None:
            raise not_found(name)
        if self.draining:
            raise ApiError(
                503, "ShuttingDown", "the host is shutting down", headers={"Retry-After": "1"}
            )
        return dep


def host_state(request: Request) -> HostState:
    state: HostState = request.app.state.host
    return state
