"""FastAPI dependencies shared by the routes: the handler, readiness, the API key.

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that costs more than these checks themselves. Each dependency FastAPI
resolves costs about 10 us of a request, so the routes that run a model take one,
``serving_handler``, which calls the others.
"""

import hmac

from fastapi import Request

from core.errors import InputError
from service.config import Settings
from service.errors import Overloaded
from service.handler import DigitClassifier

__all__ = ["get_handler", "ready_handler", "require_api_key", "serving_handler"]


async def get_handler(request: Request) -> DigitClassifier:
    handler: DigitClassifier | None = getattr(request.app.state, "handler", None)
    if handler is None:
        raise Overloaded("the service is starting")
    return handler


async def ready_handler(request: Request) -> DigitClassifier:
    """The handler, or 503 + Retry-After while warming up or draining."""
    handler = await get_handler(request)
    status = handler.backend.status()
    if not status.ready:
        raise Overloaded(status.reason)
    return handler


async def require_api_key(request: Request) -> None:
    """When an API key is configured, the X-API-Key header must match it (constant-time)."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key", "").encode()
    if not hmac.compare_digest(given, settings.api_key.get_secret_value().encode()):
        raise InputError("missing or wrong API key: send it in the X-API-Key header", status_code=401)


async def serving_handler(request: Request) -> DigitClassifier:
    """For a route that runs a model: the API key checked (401), then readiness (503)."""
    await require_api_key(request)
    return await ready_handler(request)
