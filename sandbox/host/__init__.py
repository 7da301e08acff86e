"""The serverless function host: deploy guest functions over HTTP and run every request
in fresh sandbox state (docs/host.md).

    from sandbox.host import HostConfig, create_app, serve
    serve(HostConfig(port=8080, data_dir="/var/lib/sandbox-host"))

Needs the `host` extra (fastapi, uvicorn[standard], pydantic-settings, python-multipart,
prometheus_client).
The names below are imported on first use, so that `sandbox.host.cli` can say what is
missing instead of failing at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import HostConfig, load_config
    from .manifest import FunctionRecord, FunctionSpec
    from .server import serve

__all__ = ["FunctionRecord", "FunctionSpec", "HostConfig", "create_app", "load_config", "serve"]

_WHERE = {
    "create_app": ".app",
    "HostConfig": ".config",
    "load_config": ".config",
    "FunctionRecord": ".manifest",
    "FunctionSpec": ".manifest",
    "serve": ".server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
