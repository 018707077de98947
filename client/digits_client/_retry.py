"""The retry core both clients share: which failures are retried, how long to wait, when to stop.

It does no I/O, so the sync and the async client drive the very same loop and differ only
in how they send and how they sleep::

    attempts = policy.attempts(url)
    for wait in attempts:           # 0 before the first attempt, then the backoff
        if wait > 0:
            sleep(wait)
        attempts.record(send())     # a response, or the httpx.TransportError raised
    return attempts.response

The loop ends after a successful response; a failure that is not worth retrying, or the
last one allowed, raises the client's error (``DigitsHTTPError``, ``DigitsConnectionError``)
out of the ``for`` statement.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import httpx

from digits_client.errors import http_error, parse_retry_after, transport_error

__all__ = ["RETRY_STATUSES", "RETRY_TRANSPORT_ERRORS", "Attempts", "Outcome", "RetryPolicy"]

log = logging.getLogger(__name__)

# 503 is the server's own "not ready / overloaded / timed out, see Retry-After"; 502 and 504
# come from a proxy in front of a restarting server. Other statuses will not change on a retry.
RETRY_STATUSES: Final = frozenset({502, 503, 504})
# Failures before the server could have started the work: safe and useful to retry.
# Read and write timeouts are not retried: the server is slow, and asking again only adds load.
RETRY_TRANSPORT_ERRORS: Final = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

Outcome: TypeAlias = httpx.Response | httpx.TransportError
"""What one attempt ended with: the response, or the transport error httpx raised."""


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and how long to wait first.

    ``retries`` extra attempts at most. The wait after failed attempt ``n`` (0-based) is what
    the server's Retry-After asks, else ``backoff * 2**n`` seconds; either is stretched by a
    random factor in ``[1, 1 + jitter)`` so that many clients turned away together do not
    return together, and capped at ``max_delay``. Waiting never falls short of Retry-After
    (below the cap). ``random`` gives numbers in [0, 1); tests pass a fixed one.
    """

    retries: int = 3
    backoff: float = 0.5
    jitter: float = 0.5
    max_delay: float = 60.0
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"backoff must be 0 or more, got {self.backoff}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be 0 or more, got {self.jitter}")
        if self.max_delay < 0:
            raise ValueError(f"max_delay must be 0 or more, got {self.max_delay}")

    def retryable(self, outcome: Outcome) -> bool:
        """Whether asking again could give a different answer."""
        if isinstance(outcome, httpx.Response):
            return outcome.status_code in RETRY_STATUSES
        return isinstance(outcome, RETRY_TRANSPORT_ERRORS)

    def delay(self, attempt: int, outcome: Outcome) -> float | None:
        """Seconds to wait after the failed 0-based ``attempt`` before the next one, or None to give up."""
        if attempt >= self.retries or not self.retryable(outcome):
            return None
        server_says = parse_retry_after(outcome.headers.get("Retry-After")) if isinstance(outcome, httpx.Response) else None
        base = server_says if server_says is not None else self.backoff * 2**attempt
        return min(base * (1 + self.jitter * self.random()), self.max_delay)

    def attempts(self, url: str) -> Attempts:
        """The attempts of one request to ``url`` (named in errors and log lines)."""
        return Attempts(self, url)


class Attempts:
    """One request's retry loop without its I/O; see the module docstring for the loop that drives it."""

    def __init__(self, policy: RetryPolicy, url: str) -> None:
        self._policy = policy
        self._url = url
        self._outcome: Outcome | None = None
        self._response: httpx.Response | None = None

    def record(self, outcome: Outcome) -> None:
        """What the attempt just made ended with."""
        self._outcome = outcome

    @property
    def response(self) -> httpx.Response:
        """The successful response, once the loop has ended."""
        if self._response is None:
            raise RuntimeError("no successful response: the attempts have not run to completion")
        return self._response

    def __iter__(self) -> Iterator[float]:
        yield 0.0
        for attempt in itertools.count():
            outcome = self._take_outcome()
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                self._response = outcome
                return
            delay = self._policy.delay(attempt, outcome)
            if delay is None:
                if isinstance(outcome, httpx.Response):
                    raise http_error(outcome)
                raise transport_error(outcome, self._url, attempt + 1) from outcome
            what = str(outcome.status_code) if isinstance(outcome, httpx.Response) else str(outcome) or type(outcome).__name__
            log.info("%s: %s; retrying in %.2f s", self._url, what, delay)
            yield delay

    def _take_outcome(self) -> Outcome:
        outcome, self._outcome = self._outcome, None
        if outcome is None:
            raise RuntimeError("each attempt's outcome must be given to record() before the loop continues")
        return outcome
