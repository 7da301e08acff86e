"""The OpenAPI description of the invocation endpoints. Requests to them are answered
by the data plane (dataplane.py) before FastAPI routes anything; these handlers call
the same functions, so they behave the same where they are reached directly."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import dataplane
from .manifest import NAME_PATTERN
from .models import InvokeRequest, InvokeResponse, error_responses
from .reply import as_response
from .state import host_state

router = APIRouter(tags=["invocation"])

# Handlers take only the Request, so the name parameter and the bearer security are
# described by hand.
_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the function's name",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
    "example": "add",
}
_PATH_PARAM = {
    "name": "path",
    "in": "path",
    "required": True,
    "description": "the path passed to the function (after /http/)",
    "schema": {"type": "string"},
}
_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}, {}]}  # the token, or none if public
_INVOKE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": InvokeRequest.model_json_schema(),
                "example": {"args": [1, 2]},
            }
        },
    }
}
_HTTP_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {"description": "the function's response (any status, headers, body)"},
    **error_responses(400, 401, 403, 404, 405, 409, 413, 422, 429, 503, 504),
}


@router.post(
    "/functions/{name}/invoke",
    summary="Invoke a function with JSON arguments, in fresh state",
    operation_id="invoke_function",
    response_model=InvokeResponse,
    openapi_extra={**_INVOKE_BODY, "parameters": [_NAME_PARAM], **_SECURITY},
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503, 504),
)
async def invoke(request: Request) -> Response:
    name = request.path_params["name"]
    return as_response(
        await dataplane.invoke(host_state(request), request.scope, request.body, name)
    )


async def http_root(request: Request) -> Response:
    host, name = host_state(request), request.path_params["name"]
    return as_response(await dataplane.http(host, request.scope, request.body, name, "/"))


async def http_path(request: Request) -> Response:
    host, name = host_state(request), request.path_params["name"]
    path = request.path_params["path"]
    return as_response(await dataplane.http(host, request.scope, request.body, name, path))


# One route per method, so that each operation has its own operationId.
for _method in dataplane.HTTP_METHODS:
    for _path, _endpoint, _params, _where in [
        ("/functions/{name}/http", http_root, [_NAME_PARAM], "root"),
        ("/functions/{name}/http/{path:path}", http_path, [_NAME_PARAM, _PATH_PARAM], "path"),
    ]:
        router.add_api_route(
            _path,
            _endpoint,
            methods=[_method],
            operation_id=f"http_{_method.lower()}" + ("" if _where == "root" else "_path"),
            summary=f"{_method} to a function in http mode"
            + (" (path /)" if _where == "root" else ""),
            responses=_HTTP_RESPONSES,
            response_class=Response,
            openapi_extra={"parameters": _params, **_SECURITY},
        )
