"""How every error becomes a JSON response: ``{"detail": ...}``, or ``{"error": ...}`` under /v2."""

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from core.errors import InputError
from service.errors import Overloaded, error_body
from service.schemas import ErrorResponse

__all__ = ["ERRORS", "register_error_handlers"]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed body",
        401: "missing or wrong API key (only when one is configured)",
        404: "unknown model",
        413: "too many images, bytes or pixels",
        415: "unsupported media type",
        422: "an image is not decodable, or the body is invalid",
        503: "not ready, overloaded or timed out (see Retry-After)",
    }.items()
}


def _error(request: Request, status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, message), status_code=status, headers=headers)


def register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(request, exc.status_code, exc.message)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(request, 503, exc.message, {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = ["{}: {}".format(" -> ".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()[:5]]
        status = 400 if request.url.path.startswith("/v2") else 422
        return _error(request, status, "; ".join(messages))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        """The client hung up mid-upload: nobody will read an answer, and it is not our fault."""
        return Response(status_code=499)
