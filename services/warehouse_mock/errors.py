"""Error responses that FastAPI's defaults get wrong for this API's published contract.

- Validation errors echo the bad input. Python's JSON parser accepts ``NaN`` and ``1e400``,
  which cannot be encoded back into JSON, so the default 422 handler crashed into a 500.
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

_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default handler echoes the bad input; Python's json parser accepts NaN and
    # 1e400, and echoing those back cannot be encoded as JSON, which became a 500.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


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
        # Starlette names only the methods of the first route matching the path, but GET and
        # PUT /admin/faults are separate routes: Allow must name every method of the path.
        allowed = [method for method in _METHODS if _routable(request, method)]
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)
