"""The one error type a client's bad input becomes, and the overload error."""

__all__ = ["InputError", "Overloaded"]


class InputError(ValueError):
    """Bad client input; becomes a 4xx JSON response with ``message`` as its detail."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class Overloaded(RuntimeError):
    """The service cannot take this work now; becomes 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
