"""The management API: deploy (PUT), change settings (PATCH), roll back, list and
describe (GET, with an ETag), delete (DELETE), recent logs, and the scoped tokens. Every
endpoint needs a token of the deploy scope (tokens: admin); it is checked before the
body is read. PUT, PATCH, rollback and DELETE honour If-Match (412 on a lost race)."""

from __future__ import annotations

import json
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from .auth import TokenSpec
from .deployment import Deployment
from .errors import ApiError, bad_request, not_found
from .manifest import NAME_PATTERN, NAME_RULE, FunctionSpec
from .models import (
    ErrorBody,
    FunctionInfo,
    FunctionList,
    LogList,
    NewToken,
    TokenList,
    error_responses,
)
from .registry import spec_from
from .state import HostState, host_state

bearer = HTTPBearer(
    auto_error=False,
    description="the host's token (HostConfig.token, or the file <data_dir>/token)",
)
Token = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
Name = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        description=NAME_RULE,
        examples=["add"],
    ),
]
router = APIRouter(tags=["functions"])

_MANIFEST_SCHEMA: dict[str, Any] = {
    "$ref": "#/components/schemas/FunctionSpec",
    "description": "the manifest, a JSON object (part content type application/json)",
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["manifest"],
                    "properties": {
                        "manifest": _MANIFEST_SCHEMA,
                        "module": {
                            "type": "string",
                            "format": "binary",
                            "description": "the guest ELF (or Wasm module); optional when "
                            "updating: the current module is kept",
                        },
                    },
                },
                "encoding": {"manifest": {"contentType": "application/json"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/FunctionSpec"}},
        },
    }
}


def _spec_from(raw: object) -> FunctionSpec:
    """Raises ApiError 400 for a manifest that is not valid JSON or not a FunctionSpec."""
    if isinstance(raw, str | bytes | bytearray):
        try:
            json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"invalid manifest: not JSON: {exc}", "InvalidManifest") from None
    return spec_from(raw)


def _manage(request: Request) -> HostState:
    """The host, once it is started and the request's token has the deploy scope."""
    host = host_state(request)
    host.authorize(request, "deploy")
    host.require_started()
    return host


def _described(dep: Deployment, status: int = 200) -> Response:
    return JSONResponse(dep.info(), status_code=status, headers={"ETag": dep.record.etag})


async def _read_upload(request: Request) -> tuple[FunctionSpec, BinaryIO | None]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return _spec_from(await request.body()), None
    if content_type != "multipart/form-data":
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "send multipart/form-data (fields: manifest, module) or an application/json manifest",
        )
    form = await request.form(max_files=1, max_fields=2, max_part_size=1 << 20)
    unknown = set(form.keys()) - {"manifest", "module"}
    if unknown:
        raise bad_request(f"unknown form fields: {', '.join(sorted(unknown))}")
    field = form.get("manifest")
    if field is None:
        raise bad_request("the form needs a 'manifest' field (JSON)", "InvalidManifest")
    manifest = await field.read(1 << 20) if isinstance(field, UploadFile) else field
    module = form.get("module")
    if isinstance(module, str):  # sent as a plain field, not a file
        raise bad_request("'module' must be sent as a file part (filename=...)")
    return _spec_from(manifest), None if module is None else module.file


@router.put(
    "/functions/{name}",
    summary="Deploy (create or update) a function",
    response_model=FunctionInfo,
    status_code=200,
    openapi_extra=_UPLOAD_BODY,
    operation_id="deploy_function",
    responses={
        201: {"model": FunctionInfo, "description": "created"},
        **error_responses(400, 401, 403, 412, 413, 422, 503),
        415: {"model": ErrorBody, "description": "neither multipart/form-data nor JSON"},
    },
)
async def put_function(request: Request, name: Name, _: Token = None) -> Response:
    """A multipart upload (manifest + module), or a JSON manifest alone: it replaces
    the whole manifest (omitted fields take their defaults) and keeps the module."""
    host = _manage(request)
    try:
        spec, module = await _read_upload(request)
        dep, created = await host.registry.deploy(
            name, spec, module, if_match=request.headers.get("if-match")
        )
    finally:
        await request.close()  # the uploaded file's spool
    return _described(dep, 201 if created else 200)


@router.patch(
    "/functions/{name}",
    summary="Change some settings of a function (JSON merge patch of its manifest)",
    response_model=FunctionInfo,
    operation_id="patch_function",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
    responses=error_responses(400, 401, 403, 404, 412, 413, 422, 503),
)
async def patch_function(request: Request, name: Name, _: Token = None) -> Response:
    """RFC 7396: members given replace the manifest's, null resets one to its default,
    the rest is kept; the module is kept."""
    host = _manage(request)
    try:
        patch = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "InvalidJson") from None
    dep = await host.registry.patch(name, patch, if_match=request.headers.get("if-match"))
    return _described(dep)


@router.post(
    "/functions/{name}/rollback",
    summary="Make an earlier version current again (as a new version)",
    response_model=FunctionInfo,
    operation_id="rollback_function",
    responses=error_responses(400, 401, 403, 404, 412, 422, 503),
)
async def rollback_function(
    request: Request,
    name: Name,
    version: Annotated[int | None, Query(ge=1, description="default: the one before")] = None,
    _: Token = None,
) -> Response:
    host = _manage(request)
    dep = await host.registry.rollback(name, version, if_match=request.headers.get("if-match"))
    return _described(dep)


@router.get(
    "/functions/{name}/logs",
    summary="Recent calls of a function that printed or failed (newest last)",
    response_model=LogList,
    operation_id="function_logs",
    responses=error_responses(400, 401, 403, 404, 503),
)
async def function_logs(
    request: Request,
    name: Name,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    _: Token = None,
) -> Response:
    host = _manage(request)
    dep = host.registry.get(name)
    if dep is None:
        raise not_found(name)
    entries = list(dep.logs)[-limit:]
    return JSONResponse({"function": name, "entries": entries})


@router.get(
    "/functions",
    summary="List the deployed functions",
    response_model=FunctionList,
    operation_id="list_functions",
    responses=error_responses(401, 403, 503),
)
async def list_functions(request: Request, _: Token = None) -> Response:
    host = _manage(request)
    return JSONResponse({"functions": [d.info() for d in host.registry.all()]})


@router.get(
    "/functions/{name}",
    summary="Describe a function",
    response_model=FunctionInfo,
    operation_id="get_function",
    responses=error_responses(400, 401, 403, 404, 503),
)
async def get_function(request: Request, name: Name, _: Token = None) -> Response:
    host = _manage(request)
    dep = host.registry.get(name)
    if dep is None:
        raise not_found(name)
    return _described(dep)


@router.delete(
    "/functions/{name}",
    summary="Delete a function (its running calls finish first)",
    status_code=204,
    response_class=Response,
    operation_id="delete_function",
    responses=error_responses(400, 401, 403, 404, 412, 503),
)
async def delete_function(request: Request, name: Name, _: Token = None) -> Response:
    host = _manage(request)
    await host.registry.delete(name, if_match=request.headers.get("if-match"))
    return Response(status_code=204)


# -- tokens -------------------------------------------------------------------------------


@router.post(
    "/tokens",
    summary="Make a scoped token (admin, deploy, or invoke one function)",
    response_model=NewToken,
    status_code=201,
    operation_id="create_token",
    tags=["tokens"],
    responses=error_responses(400, 401, 403, 503),
)
async def create_token(request: Request, spec: TokenSpec, _: Token = None) -> Response:
    """The token is in the reply only: the host keeps its SHA-256."""
    host = host_state(request)
    host.authorize(request, "admin")
    host.require_started()
    record, token = host.guard.create(spec)
    return JSONResponse({**record.public(), "token": token}, status_code=201)


@router.get(
    "/tokens",
    summary="List the scoped tokens (never their values)",
    response_model=TokenList,
    operation_id="list_tokens",
    tags=["tokens"],
    responses=error_responses(401, 403, 503),
)
async def list_tokens(request: Request, _: Token = None) -> Response:
    host = host_state(request)
    host.authorize(request, "admin")
    return JSONResponse({"tokens": [r.public() for r in host.guard.list()]})


@router.delete(
    "/tokens/{token_id}",
    summary="Revoke a scoped token",
    status_code=204,
    response_class=Response,
    operation_id="revoke_token",
    tags=["tokens"],
    responses=error_responses(400, 401, 403, 404, 503),
)
async def revoke_token(
    request: Request,
    token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    _: Token = None,
) -> Response:
    host = host_state(request)
    host.authorize(request, "admin")
    host.require_started()
    if not host.guard.revoke(token_id):
        raise ApiError(404, "TokenNotFound", f"no token {token_id!r}")
    return Response(status_code=204)
