"""The overload error, and how serving words the input errors of ``core.errors``."""

from pydantic import ValidationError

from core.errors import InputError

__all__ = ["LoadRefused", "ModelUnloaded", "Overloaded", "error_body", "invalid_body"]


class Overloaded(RuntimeError):
    """The service cannot take this work now; becomes 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ModelUnloaded(InputError):
    """A served model taken out of service through the model repository (``/v2/repository``)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is unloaded; POST /v2/repository/models/{model}/load serves it again", status_code=404)
        self.model = model


class LoadRefused(RuntimeError):
    """Weights on disk that cannot be served (``service.inference.repository``); the message says which file and why."""


def invalid_body(exc: ValidationError, status_code: int = 422) -> InputError:
    """The first validation problem of a JSON body, with where in the body it is."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return InputError(f"invalid JSON body at {where}: {first['msg']}", status_code)


def error_body(path: str, message: str) -> dict[str, str]:
    """``{"detail": ...}`` as the contract says; ``{"error": ...}`` under /v2, as V2 says."""
    return {"error" if path.startswith("/v2") else "detail": message}
