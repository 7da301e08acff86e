"""Operations endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import metrics as prom
from .middleware import probe
from .models import Status, error_responses
from .reply import as_response
from .state import host_state

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Status,
    summary="Liveness: the process serves HTTP",
    operation_id="healthz",
)
async def healthz(request: Request) -> Response:
    return as_response(probe(host_state(request), "/healthz"))


@router.get(
    "/readyz",
    response_model=Status,
    summary="Readiness: functions loaded and not shutting down",
    operation_id="readyz",
    responses={503: {"model": Status, "description": "starting or draining"}},
)
async def readyz(request: Request) -> Response:
    return as_response(probe(host_state(request), "/readyz"))


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4)",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {prom.CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
    },
)
async def metrics(request: Request) -> Response:
    host = host_state(request)
    if not host.config.public_metrics:
        host.authorize(request, "deploy")
    return Response(host.metrics.render(), media_type=prom.CONTENT_TYPE)
