"""``Client`` (sync) and ``AsyncClient`` (async): the digit recogniser's HTTP API as typed calls.

Both wrap httpx, share one set of request builders, response readers and one retry loop
(``digits_client._retry``), and differ only in sending and sleeping.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from digits_client._retry import Outcome, RetryPolicy
from digits_client._version import __version__
from digits_client.errors import DigitsResponseError
from digits_client.images import ImageInput, Part, parts
from digits_client.models import ModelInfoResponse, PredictResponse, ReadResponse

__all__ = ["DEFAULT_URL", "AsyncClient", "Client"]

DEFAULT_URL: Final = "http://localhost:8000"

_Model = TypeVar("_Model", bound=BaseModel)


class _Settings:
    """What both clients derive from their constructor arguments."""

    def __init__(self, url: str, api_key: str | None, timeout: float | None, retries: int, backoff: float, jitter: float) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        self.url = url.rstrip("/")
        self.retry = RetryPolicy(retries=retries, backoff=backoff, jitter=jitter)
        self.headers = {"User-Agent": f"digits-client/{__version__}", "Accept": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key


def _predict_request(
    images: ImageInput | Sequence[ImageInput], model: str | None, include_input: bool
) -> tuple[list[Part], dict[str, str]]:
    """The multipart parts and query of ``POST /predict``; encoding the images here raises DigitsInputError before sending."""
    params = {"include_input": "true"} if include_input else {}
    if model is not None:
        params["model"] = model
    return parts(images), params


def _read(model: type[_Model], response: httpx.Response) -> _Model:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise DigitsResponseError(f"unexpected {response.request.url.path} response from {response.url}: {exc}") from exc


def _predict_response(response: httpx.Response, sent: int) -> PredictResponse:
    result = _read(PredictResponse, response)
    if len(result.predictions) != sent:
        raise DigitsResponseError(f"sent {sent} images but got {len(result.predictions)} predictions")
    return result


def _read_request(images: ImageInput | Sequence[ImageInput], model: str | None) -> tuple[list[Part], dict[str, str]]:
    """The multipart parts and query of ``POST /read``."""
    return parts(images), ({"model": model} if model is not None else {})


def _read_response(response: httpx.Response, sent: int) -> ReadResponse:
    result = _read(ReadResponse, response)
    if len(result.readings) != sent:
        raise DigitsResponseError(f"sent {sent} images but got {len(result.readings)} readings")
    return result


async def _async_sleep(seconds: float) -> None:
    """``trio.sleep`` under trio, else ``asyncio.sleep``: httpx runs on both, and neither is a dependency here."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            await trio.sleep(seconds)
            return
    await asyncio.sleep(seconds)


class Client:
    """Synchronous client; one connection pool, so reuse it (``with Client(...) as c:``).

    ``retries`` extra attempts follow a 502/503/504 (waiting as Retry-After says, else
    ``backoff * 2**n`` seconds, each stretched by up to ``jitter`` of itself and at most 60)
    or a failed connection; every prediction is a pure function of its input, so repeating a
    request is safe. ``transport`` replaces the network, e.g. with ``httpx.MockTransport``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        jitter: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = _Settings(url, api_key, timeout, retries, backoff, jitter)
        self.url = settings.url
        self._retry = settings.retry
        self._http = httpx.Client(base_url=self.url, headers=settings.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def predict(self, images: ImageInput | Sequence[ImageInput], model: str | None = None, include_input: bool = False) -> PredictResponse:
        """Classify one image or a list of them in one request; predictions come back in input order.

        ``model`` picks a served model (the server's default when None); ``include_input``
        also returns the 28x28 image the model saw, to check the preprocessing.
        """
        files, params = _predict_request(images, model, include_input)
        return _predict_response(self._request("POST", "/predict", files=files, params=params), len(files))

    def read(self, images: ImageInput | Sequence[ImageInput], model: str | None = None) -> ReadResponse:
        """Read the number written on one image or on each of a list of them, in one request.

        Each reading has the ``text`` read (left to right; "" for an image with no digit),
        its confidence, and every piece of ink with its label and box in the image's pixels;
        pieces that are no digit (``is_digit`` false) are left out of the text.
        """
        files, params = _read_request(images, model)
        return _read_response(self._request("POST", "/read", files=files, params=params), len(files))

    def model_info(self) -> ModelInfoResponse:
        """What the server serves: models, weights, accuracy, batching settings."""
        return _read(ModelInfoResponse, self._request("GET", "/model-info"))

    def ready(self) -> bool:
        """Whether the server takes predictions now (GET /readyz is 200); False if unreachable. Not retried."""
        return self._probe("/readyz")

    def healthy(self) -> bool:
        """Whether the process answers HTTP (GET /healthz is 200); False if unreachable. Not retried."""
        return self._probe("/healthz")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self._retry.attempts(self.url)
        for wait in attempts:
            if wait > 0:
                time.sleep(wait)
            attempts.record(self._send(method, path, **kwargs))
        return attempts.response

    def _send(self, method: str, path: str, **kwargs: Any) -> Outcome:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            return exc

    def _probe(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient:
    """The asynchronous twin of ``Client`` (same options and methods, awaited); runs on asyncio or trio."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        jitter: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = _Settings(url, api_key, timeout, retries, backoff, jitter)
        self.url = settings.url
        self._retry = settings.retry
        self._http = httpx.AsyncClient(base_url=self.url, headers=settings.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    aclose = close

    async def predict(
        self, images: ImageInput | Sequence[ImageInput], model: str | None = None, include_input: bool = False
    ) -> PredictResponse:
        """Classify one image or a list of them in one request; see ``Client.predict``."""
        files, params = _predict_request(images, model, include_input)  # encoding is quick next to a forward pass: no thread hop
        return _predict_response(await self._request("POST", "/predict", files=files, params=params), len(files))

    async def read(self, images: ImageInput | Sequence[ImageInput], model: str | None = None) -> ReadResponse:
        """Read the number written on each image in one request; see ``Client.read``."""
        files, params = _read_request(images, model)
        return _read_response(await self._request("POST", "/read", files=files, params=params), len(files))

    async def model_info(self) -> ModelInfoResponse:
        """What the server serves: models, weights, accuracy, batching settings."""
        return _read(ModelInfoResponse, await self._request("GET", "/model-info"))

    async def ready(self) -> bool:
        """Whether the server takes predictions now (GET /readyz is 200); False if unreachable. Not retried."""
        return await self._probe("/readyz")

    async def healthy(self) -> bool:
        """Whether the process answers HTTP (GET /healthz is 200); False if unreachable. Not retried."""
        return await self._probe("/healthz")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self._retry.attempts(self.url)
        for wait in attempts:
            if wait > 0:
                await _async_sleep(wait)
            attempts.record(await self._send(method, path, **kwargs))
        return attempts.response

    async def _send(self, method: str, path: str, **kwargs: Any) -> Outcome:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            return exc

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False
