"""The one error type a client's bad input becomes."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad client input; becomes a 4xx JSON response with ``message`` as its detail."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
