"""A typed Python client for the digit recogniser, and the ``digits`` command line built on it.

``Client`` (sync) and ``AsyncClient`` (async) wrap httpx: they turn paths, image bytes,
PIL images and numpy arrays into the multipart request ``/predict`` expects, retry what
is worth retrying (503 with its Retry-After, refused connections), and return the very
pydantic models the server answers with (``service.schemas``), so both sides share one
contract. Errors become one small exception hierarchy rooted at ``DigitsError``.

This module must stay light enough for scripts and notebooks on machines without a GPU
stack: it never imports torch, and numpy and Pillow only when an image needs encoding.

    python -m service.client predict digit.png scans/ --model resnet
    python -m service.client info --json
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import io
import json
import logging
import math
import mimetypes
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Self, TypeAlias

import anyio
import httpx
from pydantic import ValidationError

from service import __version__
from service.schemas import ModelInfoResponse, Prediction, PredictResponse

if TYPE_CHECKING:
    import numpy.typing as npt
    from PIL import Image

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "DigitsConnectionError",
    "DigitsError",
    "DigitsHTTPError",
    "DigitsInputError",
    "DigitsTimeoutError",
    "ImageInput",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "http://localhost:8000"
IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# 503 is the server's own "not ready / overloaded / timed out, see Retry-After"; 502 and 504
# come from a proxy in front of a restarting server. Other statuses will not change on a retry.
RETRY_STATUSES: Final = frozenset({502, 503, 504})
# Failures before the server could have started the work: safe and useful to retry.
# Read and write timeouts are not retried: the server is slow, and asking again only adds load.
RETRY_TRANSPORT_ERRORS: Final = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | npt.NDArray[Any]"
"""One image: a file path, an image file's bytes, an open binary file, a PIL image, or a 2-D array."""

Part: TypeAlias = tuple[str, tuple[str, bytes, str]]


# Errors -------------------------------------------------------------------------------


class DigitsError(Exception):
    """Base of every error this client raises, so callers can catch one type."""


class DigitsInputError(DigitsError, ValueError):
    """An image could not be read or encoded here, before anything was sent."""


class DigitsConnectionError(DigitsError):
    """The server could not be reached (after the retries) or broke the connection."""


class DigitsTimeoutError(DigitsConnectionError):
    """The server did not answer within the client's timeout; not retried, as it only adds load."""


class DigitsHTTPError(DigitsError):
    """The server answered with an error status: 4xx at once, 5xx once the retries are spent.

    ``detail`` is the server's own message (its JSON ``detail``), which names the offending
    image by position and file name; ``str()`` reads ``"422: image 0 ('x.png') is blank: ..."``.
    """

    def __init__(self, status_code: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


# Encoding images -----------------------------------------------------------------------

_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def _bytes_name(data: bytes) -> str:
    """A file name for anonymous bytes, so server messages can say which input and what kind it was."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "bytes.webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return "bytes" + suffix
    return "bytes"


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}:  # PNG cannot hold e.g. CMYK or F
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _array_png(array: npt.NDArray[Any], index: int) -> bytes:
    """Lossless PNG of a 2-D array: uint8 (or integers in 0..255), bool, or floats in [0, 1]."""
    import numpy as np
    from PIL import Image

    if array.ndim != 2:
        hint = "; for a stack of images pass list(array)" if array.ndim == 3 else ""
        raise DigitsInputError(f"image {index}: expected a 2-D (height x width) array, got shape {array.shape}{hint}")
    if array.size == 0:
        raise DigitsInputError(f"image {index}: the array is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 1:
            raise DigitsInputError(f"image {index}: float arrays must hold values in [0, 1], got {low:g} .. {high:g}")
        pixels = np.rint(array * 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DigitsInputError(f"image {index}: integer arrays must hold values in 0 .. 255, got {low} .. {high}")
        pixels = array.astype(np.uint8, copy=False)
    else:
        raise DigitsInputError(f"image {index}: unsupported array dtype {array.dtype}; use uint8 or floats in [0, 1]")
    return _png(Image.fromarray(np.ascontiguousarray(pixels), mode="L"))


def _part(item: ImageInput, index: int) -> Part:
    """One multipart part named ``files``; numpy and Pillow are consulted only if already imported,
    since an object of theirs cannot exist otherwise."""
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DigitsInputError(f"image {index}: cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        return "files", (path.name, data, _content_type(path.name))
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        name = _bytes_name(data)
        return "files", (name, data, _content_type(name))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(item, numpy.ndarray):
        return "files", ("array.png", _array_png(item, index), "image/png")
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(item, pil.Image):
        name = Path(str(getattr(item, "filename", "") or "image")).with_suffix(".png").name
        return "files", (name, _png(item), "image/png")
    if callable(getattr(item, "read", None)):
        data = item.read()  # type: ignore[union-attr]
        if not isinstance(data, bytes):
            raise DigitsInputError(f"image {index}: the file object gave {type(data).__name__}, not bytes; open it in binary mode")
        name = Path(str(getattr(item, "name", "") or "")).name or _bytes_name(data)
        return "files", (name, data, _content_type(name))
    raise DigitsInputError(
        f"image {index}: unsupported type {type(item).__name__}; "
        "expected a path, image file bytes, a binary file, a PIL image or a numpy array"
    )


def _parts(images: ImageInput | Sequence[ImageInput]) -> list[Part]:
    """One part per image, in order; a lone image is the same as a list of one."""
    items: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]  # type: ignore[list-item]
    if not items:
        raise DigitsInputError("no images given")
    return [_part(item, index) for index, item in enumerate(items)]


# Responses and retries -----------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
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


def _http_error(response: httpx.Response) -> DigitsHTTPError:
    """The server's JSON message (``detail``, or ``error`` under /v2), else the start of the body."""
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
    return DigitsHTTPError(response.status_code, detail, retry_after=_retry_after(response.headers.get("Retry-After")))


def _transport_error(exc: httpx.TransportError, url: str, attempts: int) -> DigitsConnectionError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return DigitsTimeoutError(f"{url} did not answer in time ({type(exc).__name__})")
    return DigitsConnectionError(f"cannot reach {url}{tries}: {exc or type(exc).__name__}")


def _predict_response(response: httpx.Response, expected: int) -> PredictResponse:
    try:
        result = PredictResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise DigitsError(f"unexpected /predict response from {response.url}: {exc}") from exc
    if len(result.predictions) != expected:
        raise DigitsError(f"sent {expected} images but got {len(result.predictions)} predictions")
    return result


def _model_info_response(response: httpx.Response) -> ModelInfoResponse:
    try:
        return ModelInfoResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise DigitsError(f"unexpected /model-info response from {response.url}: {exc}") from exc


@dataclass(frozen=True)
class _Retry:
    """When to try again and how long to wait first; shared by both clients."""

    retries: int
    backoff: float
    max_delay: float

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt (0-based ``attempt`` just failed), or None to give up."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            server_says = _retry_after(response.headers.get("Retry-After"))
            if server_says is not None:
                return min(server_says, self.max_delay)
        return min(self.backoff * 2**attempt, self.max_delay)

    def after(self, attempt: int, outcome: httpx.Response | httpx.TransportError, url: str) -> float:
        """Seconds to wait after a failed attempt, or the client's error when it is time to give up."""
        if isinstance(outcome, httpx.Response):
            delay = self.delay(attempt, outcome)
            if delay is None:
                raise _http_error(outcome)
            what = str(outcome.status_code)
        else:
            delay = self.delay(attempt, None) if isinstance(outcome, RETRY_TRANSPORT_ERRORS) else None
            if delay is None:
                raise _transport_error(outcome, url, attempt + 1) from outcome
            what = str(outcome) or type(outcome).__name__
        log.info("%s: %s; retrying in %.2f s", url, what, delay)
        return delay


def _settings(api_key: str | None, timeout: float | None, retries: int, backoff: float) -> tuple[dict[str, str], _Retry]:
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    if backoff < 0:
        raise ValueError(f"backoff must be 0 or more, got {backoff}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive or None, got {timeout}")
    headers = {"User-Agent": f"digits-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers, _Retry(retries, backoff, max_delay=60.0)


def _predict_params(model: str | None, include_input: bool) -> dict[str, str]:
    params = {"include_input": "true"} if include_input else {}
    if model is not None:
        params["model"] = model
    return params


# Clients -------------------------------------------------------------------------------


class Client:
    """Synchronous client; one connection pool, so reuse it (``with Client(...) as c:``).

    ``retries`` extra attempts follow a 502/503/504 (waiting as Retry-After says, else
    ``backoff * 2**n`` seconds, at most 60) or a failed connection; every prediction is a
    pure function of its input, so repeating a request is safe. ``transport`` replaces the
    network, e.g. with ``httpx.MockTransport`` in tests.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers, self._retry = _settings(api_key, timeout, retries, backoff)
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return outcome
            time.sleep(self._retry.after(attempt, outcome, self.url))
            attempt += 1

    def predict(self, images: ImageInput | Sequence[ImageInput], model: str | None = None, include_input: bool = False) -> PredictResponse:
        """Classify one image or a list of them in one request; predictions come back in input order.

        ``model`` picks a served model (the server's default when None); ``include_input``
        also returns the 28x28 image the model saw, to check the preprocessing.
        """
        parts = _parts(images)
        response = self._request("POST", "/predict", files=parts, params=_predict_params(model, include_input))
        return _predict_response(response, len(parts))

    def model_info(self) -> ModelInfoResponse:
        """What the server serves: models, weights, accuracy, batching settings."""
        return _model_info_response(self._request("GET", "/model-info"))

    def ready(self) -> bool:
        """Whether the server takes predictions now (GET /readyz is 200); False if unreachable. Not retried."""
        return self._probe("/readyz")

    def healthy(self) -> bool:
        """Whether the process answers HTTP (GET /healthz is 200); False if unreachable. Not retried."""
        return self._probe("/healthz")

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers, self._retry = _settings(api_key, timeout, retries, backoff)
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    aclose = close

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return outcome
            await anyio.sleep(self._retry.after(attempt, outcome, self.url))
            attempt += 1

    async def predict(
        self, images: ImageInput | Sequence[ImageInput], model: str | None = None, include_input: bool = False
    ) -> PredictResponse:
        """Classify one image or a list of them in one request; see ``Client.predict``."""
        parts = _parts(images)  # encoding is quick next to a forward pass; no thread hop needed
        response = await self._request("POST", "/predict", files=parts, params=_predict_params(model, include_input))
        return _predict_response(response, len(parts))

    async def model_info(self) -> ModelInfoResponse:
        """What the server serves: models, weights, accuracy, batching settings."""
        return _model_info_response(await self._request("GET", "/model-info"))

    async def ready(self) -> bool:
        """Whether the server takes predictions now (GET /readyz is 200); False if unreachable."""
        return await self._probe("/readyz")

    async def healthy(self) -> bool:
        """Whether the process answers HTTP (GET /healthz is 200); False if unreachable."""
        return await self._probe("/healthz")

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False


# Command line --------------------------------------------------------------------------


def _image_files(arguments: Sequence[str]) -> tuple[list[Path], bool]:
    """Files as given, and each directory's images (by suffix, sorted by name, not recursive).

    Also says whether a directory was named, which is when a progress bar is worth showing.
    """
    files: list[Path] = []
    any_directory = False
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            any_directory = True
            found = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name)
            if not found:
                print(f"warning: no images in {argument} ({', '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DigitsInputError(f"no such file or directory: {argument}")
    if not files:
        raise DigitsInputError("no images to predict")
    return files, any_directory


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _progress(total: int, wanted: bool) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr when wanted and stderr is a terminal; nothing if tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is only in the [train] extra; the bar is a nicety
        wanted = False
    if not wanted:
        yield lambda _: None
        return
    with tqdm(total=total, unit="img", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Plain aligned columns; ``right`` holds the indices of numeric columns."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    files, any_directory = _image_files(args.inputs)
    results: list[tuple[Path, Prediction]] = []
    model = ""
    bar = _progress(len(files), any_directory or len(files) > args.batch_size)
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client, bar as advance:
        for batch in _batches(files, args.batch_size):
            response = client.predict(list(batch), model=args.model)
            model = response.model
            results.extend(zip(batch, response.predictions, strict=True))
            advance(len(batch))
    if args.json:
        payload = {
            "model": model,
            "predictions": [
                {"file": str(path), "label": p.label, "confidence": p.confidence, "probabilities": p.probabilities} for path, p in results
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        rows = [(str(path), str(p.label), f"{100 * p.confidence:.1f}%") for path, p in results]
        print(_table(("file", "digit", "confidence"), rows, right=frozenset({1, 2})))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        info = client.model_info()
    if args.json:
        print(info.model_dump_json(indent=2))
        return 0
    rows = []
    for m in info.models:
        accuracy = m.metrics.get("test_accuracy")
        rows.append(
            (
                m.name + (" *" if m.name == info.default_model else ""),
                m.architecture.split(":")[0].strip(),
                f"{m.parameters:,}",
                f"{100 * accuracy:.2f}%" if isinstance(accuracy, int | float) else "-",
                m.device,
                (m.weights.sha256 or "-")[:12],
            )
        )
    print(_table(("name", "architecture", "parameters", "test accuracy", "device", "sha256"), rows, right=frozenset({2, 3})))
    print(f"* default model; service {info.service_version}, torch {info.torch_version}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DIGITS_URL", DEFAULT_URL), help="server URL (default: $DIGITS_URL or %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("DIGITS_API_KEY"), help="sent as X-API-Key (default: $DIGITS_API_KEY)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="digits", description="Client for the handwritten digit recogniser.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser("predict", parents=[common], help="classify image files and directories of images")
    predict.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR", help="an image file, or a directory of images (png, jpg, bmp, gif, webp, tiff)"
    )
    predict.add_argument("--model", help="served model name (default: the server's default)")
    predict.add_argument("--batch-size", type=_positive_int, default=64, help="images per request (default: %(default)s)")
    commands.add_parser("info", parents=[common], help="show the served models")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``digits`` command; returns the exit status (0 ok, 1 an error, 2 bad usage)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return their status instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _cmd_predict(args) if args.command == "predict" else _cmd_info(args)
    except DigitsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
