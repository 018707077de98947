"""The client's exceptions, rooted at ``DigitsError``, and how HTTP failures map onto them."""

from __future__ import annotations

import email.utils
import json
import math
from datetime import UTC, datetime

import httpx

__all__ = [
    "DigitsConnectionError",
    "DigitsError",
    "DigitsHTTPError",
    "DigitsInputError",
    "DigitsResponseError",
    "DigitsTimeoutError",
    "http_error",
    "parse_retry_after",
    "transport_error",
]


class DigitsError(Exception):
    """Base of every error this client raises, so callers can catch one type."""


class DigitsInputError(DigitsError, ValueError):
    """An image could not be read or encoded here, before anything was sent."""


class DigitsConnectionError(DigitsError):
    """The server could not be reached (after the retries) or broke the connection."""


class DigitsTimeoutError(DigitsConnectionError):
    """The server did not answer within the client's timeout; not retried, as it only adds load."""


class DigitsResponseError(DigitsError):
    """The server answered 200 with a body this client does not understand."""


class DigitsHTTPError(DigitsError):
    """The server answered with an error status: 4xx at once, 5xx once the retries are spent.

    ``detail`` is the server's own message (its JSON ``detail``), which names the offending
    image by position and file name; ``str()`` reads ``"422: image 0 ('x.png') is blank: ..."``.
    ``retry_after`` holds the seconds of the response's Retry-After header, if it had one.
    """

    def __init__(self, status_code: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def http_error(response: httpx.Response) -> DigitsHTTPError:
    """The error for a failed response: the server's JSON message (``detail``, or ``error`` under /v2), else the start of the body."""
    detail: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("detail", body.get("error"))
        if message is not None:
            detail = message if isinstance(message, str) else json.dumps(message)
    if detail is None:
        detail = response.text.strip()[:500] or response.reason_phrase or "no message"
    return DigitsHTTPError(response.status_code, detail, retry_after=parse_retry_after(response.headers.get("Retry-After")))


def transport_error(exc: httpx.TransportError, url: str, attempts: int) -> DigitsConnectionError:
    """The error for a request that got no response after ``attempts`` tries."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return DigitsTimeoutError(f"{url} did not answer in time ({type(exc).__name__})")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return DigitsConnectionError(f"cannot reach {url}{tries}: {exc or type(exc).__name__}")
