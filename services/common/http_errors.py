"""Error responses that FastAPI's defaults get wrong for a published contract; every
HTTP service installs them with `install_error_handlers(app)`.

- Validation errors echo the bad input. Python's JSON parser accepts ``NaN``, ``1e400``,
  lone surrogate escapes (``"\\ud800"``) and nesting thousands deep; echoing any of them
  back crashed the default 422 handler into a 500.
- A 405 must name in ``Allow`` every method of the path, not only the first route's.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

_MAX_ECHO_DEPTH = 12
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """The echoed input made encodable: bounded depth, finite floats, valid UTF-8."""
    if isinstance(value, dict | list | tuple) and depth > _MAX_ECHO_DEPTH:
        # Echoing a 3000-deep body recursed past Python's limit: a 500 instead of a 422.
        return "..."
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(item, depth + 1) for k, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item, depth + 1) for item in value]
    return value


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(_json_safe(errors))})


def _routable(request: Request, method: str) -> bool:
    probe: Scope = {
        "type": "http",
        "method": method,
        "path": request.scope["path"],
        "root_path": request.scope.get("root_path", ""),
        "headers": [],
    }
    return any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # registered for that type only
        raise exc
    if exc.status_code == 405:
        # Starlette names only the methods of the first route matching the path, but one
        # path often has several routes (GET and POST /orders): Allow must name them all.
        allowed = [method for method in _METHODS if _routable(request, method)]
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)
