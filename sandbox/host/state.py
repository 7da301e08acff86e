"""`HostState`: what the endpoints share (one per app), reached via `request.app`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .auth import Caller, Guard, Scope
from .config import HostConfig
from .deployment import Deployment
from .errors import ApiError, forbidden, not_found, unauthorized, unavailable
from .metrics import Metrics
from .registry import Registry


@dataclass(eq=False)
class HostState:
    config: HostConfig
    metrics: Metrics
    registry: Registry
    guard: Guard
    draining: bool = False
    start_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.registry.started and not self.draining

    def begin_drain(self) -> None:
        """/readyz answers 503, new invocations too (the socket still accepts); module
        start-ups of deploys in progress are stopped (those deploys answer 503)."""
        self.draining = True
        self.registry.cancel_startups()

    def require_started(self) -> None:
        """Raises ApiError 503 while the functions are being loaded."""
        if not self.registry.started:
            raise unavailable("Starting", "the host is starting: its functions are loading")

    def authorize(
        self, request: Request, need: Scope = "deploy", function: str | None = None
    ) -> Caller:
        """Raises ApiError 401/403 unless the request's token allows `need`."""
        return self.guard.check(request.headers.get("authorization"), need, function)

    def invocable(self, authorization: str | None, name: str) -> Deployment:
        """The deployment `name` if a request with this Authorization header may invoke
        it. Raises ApiError: 401 without a valid token for a non-public or unknown
        function (so that existence does not leak), 403 for a token of another
        function, 404, 503 while starting or draining."""
        if not self.registry.started:
            self.require_started()
        dep = self.registry.get(name)
        if dep is None or not dep.spec.public:
            caller = self.guard.identify(authorization)
            if caller is None:
                raise unauthorized(
                    "the bearer token is wrong"
                    if authorization
                    else "this function is not public: "
                    "invoking it needs a token (Authorization: Bearer ...)"
                )
            if not caller.may("invoke", name):
                raise forbidden(f"the token may not invoke {name!r}")
        if dep is None:
            raise not_found(name)
        if self.draining:
            raise unavailable("ShuttingDown", "the host is shutting down")
        return dep


def host_state(request: Request) -> HostState:
    state: HostState = request.app.state.host
    return state


__all__ = ["ApiError", "HostState", "host_state"]
