"""FastAPI dependencies shared by the routes: the runtime, readiness, the API key.

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
thread pool, a hand-off that costs more than these checks themselves.
"""

import hmac

from fastapi import Request

from service.config import Settings
from service.errors import InputError, Overloaded
from service.runtime import Runtime

__all__ = ["get_runtime", "ready_runtime", "require_api_key"]


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise Overloaded("the service is starting")
    return runtime


async def ready_runtime(request: Request) -> Runtime:
    """The runtime, or 503 + Retry-After while warming up or draining.

    It calls get_runtime rather than depending on it: each dependency FastAPI resolves costs
    ~10 us, and this one runs on every prediction.
    """
    runtime = await get_runtime(request)
    if not runtime.ready:
        raise Overloaded("the service is shutting down" if runtime.draining else "the models are still warming up")
    return runtime


async def require_api_key(request: Request) -> None:
    """When an API key is configured, the X-API-Key header must match it (constant-time)."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key", "").encode()
    if not hmac.compare_digest(given, settings.api_key.get_secret_value().encode()):
        raise InputError("missing or wrong API key: send it in the X-API-Key header", status_code=401)
