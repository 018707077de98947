"""The image files of a /predict request: multipart parts named ``files`` or JSON base64,
in order and within the configured limits, as bytes not yet decoded."""

import base64
import binascii
from dataclasses import dataclass

from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from core.errors import InputError
from service import tracing
from service.config import Settings
from service.errors import invalid_body
from service.schemas import PredictJSONRequest

__all__ = ["RawImage", "input_name", "read_request"]


def input_name(index: int, filename: str | None) -> str:
    """How an error message names an input: its position and, where known, its file name."""
    if filename:
        safe = filename.replace("\n", " ")[:100]
        return f"image {index} ({safe!r})"
    return f"image {index}"


@dataclass(frozen=True)
class RawImage:
    index: int
    filename: str | None
    data: bytes


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InputError("the request holds no images")
    if count > settings.max_images_per_request:
        raise InputError(
            f"the request holds {count} images, above the limit of {settings.max_images_per_request} per request",
            status_code=413,
        )


def _check_size(image: RawImage, settings: Settings) -> RawImage:
    if len(image.data) > settings.max_file_bytes:
        raise InputError(
            f"{input_name(image.index, image.filename)} has {len(image.data)} bytes, above the limit of {settings.max_file_bytes}",
            status_code=413,
        )
    return image


class _MultipartParts:
    """python-multipart's callbacks, collecting each part's name, file name and bytes in memory.

    In memory rather than Starlette's ``request.form()``, which spools every part into a
    temporary file: parsing is on every request's path, and the whole body is already
    bounded by BodyLimitMiddleware.

    The parser refers to these callbacks and nothing here refers to the parser, so no
    reference cycle holds a body once its request is done: the cyclic GC would free it only
    at its next collection. With the parser kept here, 50 aborted 900 KB uploads left the
    server 8.4 MiB larger, without 0.2 MiB (``-s`` output of ``tests/test_overload.py``'s
    ``test_clients_that_disconnect_mid_upload_do_not_hold_or_leak``, 1 run each).
    """

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.files: list[tuple[str, str, bytes]] = []  # name, file name, data
        self.fields: list[str] = []  # names of text fields (parts without a file name)
        self._header = (bytearray(), bytearray())
        self._disposition = b""
        self._chunks: list[bytes] = []

    def parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: self._header[0].extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._header[1].extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": lambda data, start, end: self._chunks.append(data[start:end]),
                "on_part_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._disposition = b""
        self._chunks = []

    def _header_end(self) -> None:
        field, value = self._header
        if field.lower() == b"content-disposition":
            self._disposition = bytes(value)
        field.clear()
        value.clear()

    def _end(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InputError("the multipart body could not be parsed: a part has no Content-Disposition name", status_code=400)
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            self.files.append((name, options[b"filename"].decode("utf-8", "replace"), b"".join(self._chunks)))
        else:
            self.fields.append(name)
        if max(len(self.files), len(self.fields)) > self.max_parts:
            # parsing stops at the first part over the limit, so the total is unknown
            raise InputError(f"the request holds more than {self.max_parts} images, above the limit of {self.max_parts} per request", 413)


async def _read_multipart(request: Request, settings: Settings) -> list[RawImage]:
    _, options = parse_options_header(request.headers["content-type"])
    if not options.get(b"boundary"):
        raise InputError("the multipart body could not be parsed: its Content-Type has no boundary", status_code=400)
    parts = _MultipartParts(settings.max_images_per_request)
    parser = parts.parser(options[b"boundary"])
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (InputError, ClientDisconnect):
        raise
    except Exception as exc:  # python-multipart raises several types for a malformed body
        raise InputError(f"the multipart body could not be parsed: {exc}", status_code=400) from None
    if parser.state != MultipartState.END:  # the upload was cut short: say so rather than drop its tail
        raise InputError("the multipart body could not be parsed: it ends before its closing boundary", status_code=400)
    if "files" in parts.fields:
        raise InputError("a part named 'files' is a text field, not a file upload: send each image as a file (with a filename)")
    files = [(filename, data) for name, filename, data in parts.files if name == "files"]
    if not files:
        names = sorted({name for name, _, _ in parts.files} | set(parts.fields))
        found = f"; it has {', '.join(repr(n) for n in names)}" if names else ""
        raise InputError(f"the multipart body has no parts named 'files'{found}")
    _check_count(len(files), settings)
    return [_check_size(RawImage(index, filename, data), settings) for index, (filename, data) in enumerate(files)]


async def _read_json(request: Request, settings: Settings) -> list[RawImage]:
    try:
        payload = PredictJSONRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_body(exc) from None
    _check_count(len(payload.images), settings)
    images = []
    for index, text in enumerate(payload.images):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{input_name(index, None)} is not valid base64") from None
        images.append(_check_size(RawImage(index, None, data), settings))
    return images


async def read_request(request: Request, settings: Settings) -> list[RawImage]:
    """The image files of a /predict request, in order, within the configured limits."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    with tracing.span("read", content_type=content_type):
        if content_type == "multipart/form-data":
            return await _read_multipart(request, settings)
        if content_type == "application/json":
            return await _read_json(request, settings)
    raise InputError(
        f"unsupported media type {content_type or '(none)'!r}; send multipart/form-data with parts named 'files' "
        'or application/json {"images": [base64, ...]}',
        status_code=415,
    )
