"""The management API: deploy (PUT), list and describe (GET), delete (DELETE). Every
endpoint needs the bearer token; it is checked before the body is read."""

from __future__ import annotations

from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Path, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from .errors import ApiError, bad_request, not_found
from .manifest import NAME_PATTERN, FunctionSpec
from .models import ErrorBody, FunctionInfo, FunctionList, error_responses
from .state import host_state

bearer = HTTPBearer(
    auto_error=False,
    description="the host's token (HostConfig.token, or the file <data_dir>/token)",
)
Token = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
Name = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        description="1-63 characters: a-z, 0-9, '_' and '-', starting with a letter or digit",
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
    try:
        return FunctionSpec.model_validate_json(raw)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise bad_request(f"invalid manifest: {where}: {first['msg']}", "InvalidManifest") from None


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
    responses={
        201: {"model": FunctionInfo, "description": "created"},
        **error_responses(400, 401, 413, 422, 503),
        415: {"model": ErrorBody, "description": "neither multipart/form-data nor JSON"},
    },
)
async def put_function(request: Request, name: Name, _: Token = None) -> Response:
    host = host_state(request)
    host.authorize(request)
    try:
        spec, module = await _read_upload(request)
        dep, created = await host.registry.deploy(name, spec, module)
    finally:
        await request.close()  # the uploaded file's spool
    return JSONResponse(dep.info(), status_code=201 if created else 200)


@router.get(
    "/functions",
    summary="List the deployed functions",
    response_model=FunctionList,
    responses=error_responses(401),
)
async def list_functions(request: Request, _: Token = None) -> Response:
    host = host_state(request)
    host.authorize(request)
    return JSONResponse({"functions": [d.info() for d in host.registry.all()]})


@router.get(
    "/functions/{name}",
    summary="Describe a function",
    response_model=FunctionInfo,
    responses=error_responses(400, 401, 404),
)
async def get_function(request: Request, name: Name, _: Token = None) -> Response:
    host = host_state(request)
    host.authorize(request)
    dep = host.registry.get(name)
    if dep is None:
        raise not_found(name)
    return JSONResponse(dep.info())


@router.delete(
    "/functions/{name}",
    summary="Delete a function (its running calls finish first)",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 401, 404),
)
async def delete_function(request: Request, name: Name, _: Token = None) -> Response:
    host = host_state(request)
    host.authorize(request)
    await host.registry.delete(name)
    return Response(status_code=204)
