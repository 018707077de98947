"""Hostile and malformed input: each gets its exact 4xx, a JSON error naming the input, and no leak.

The contract: a client-caused failure is a 4xx with ``{"detail": ...}`` (``{"error": ...}`` under
/v2) naming the input by index and filename where known; never a 500, a stack trace, an internal
path or a stuck request; afterwards the server still answers correctly.

Most cases run in-process (one app per module, so that the suite stays fast); the transport is
built with ``raise_app_exceptions=False`` so that a 500 is seen as the response a client would
get rather than as an exception. A subset runs again over real TCP against ``live_server``.
"""

import asyncio
import base64
import contextlib
import io
import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import pytest_asyncio
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.conftest import ROOT, WEIGHTS, LiveServer, encode_image, png_bytes, stroke_digit_one

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_S = 30.0  # no request may take longer than this; ASGITransport ignores httpx timeouts, so wait_for enforces it
ONE = png_bytes(stroke_digit_one())
SMALL_LIMITS = {
    "max_image_pixels": 1_000_000,
    "max_images_per_request": 4,
    "max_file_bytes": 100_000,
    "max_request_bytes": 300_000,
}
LEAKS = ("Traceback", 'File "/', "site-packages", str(ROOT), "/work/", '.py", line')


# --- plumbing -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def in_process(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Like conftest's ``serving``, but a 500 comes back as a response instead of raising in the test."""
    app = create_app(Settings(weights_dir=WEIGHTS, warmup_batches=1, **settings))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for _ in range(1200):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the app did not become ready")
        yield http


@dataclass
class Reference:
    """A valid request's answer taken before any hostile input, to compare with afterwards."""

    predictions: list[dict[str, Any]] = field(default_factory=list)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_client() -> AsyncIterator[tuple[httpx.AsyncClient, Reference]]:
    async with in_process() as http:
        reference = await http.post("/predict?model=resnet&include_input=true", files=[("files", ("one.png", ONE, "image/png"))])
        assert reference.status_code == 200, reference.text
        yield http, Reference(reference.json()["predictions"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_client() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(**SMALL_LIMITS) as http:
        yield http


@pytest.fixture
def client(app_client: tuple[httpx.AsyncClient, Reference]) -> httpx.AsyncClient:  # shadows conftest's per-test app
    return app_client[0]


async def send(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return await asyncio.wait_for(http.request(method, url, **kwargs), TIMEOUT_S)


def assert_no_leak(response: httpx.Response) -> None:
    for marker in LEAKS:
        assert marker not in response.text, f"{marker!r} leaked into the body: {response.text[:500]}"


def assert_error(response: httpx.Response, status: int, *needles: str, key: str = "detail") -> str:
    """The exact status, a JSON object with exactly one key, every needle in its message, no leak."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert isinstance(body, dict) and list(body) == [key], body
    message = body[key]
    assert isinstance(message, str)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert_no_leak(response)
    return message


def multipart_body(parts: list[tuple[str, str, bytes]], boundary: str = "hostile-boundary") -> bytes:
    """A multipart body by hand (name, filename, data), for chunked uploads and exact bytes."""
    chunks = []
    for name, filename, data in parts:
        header = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        chunks.append(header.encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


async def trickle(data: bytes, size: int = 16_384) -> AsyncIterator[bytes]:
    """A body without Content-Length: httpx sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- hostile files ----------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG header of any size with a tiny IDAT: costs nothing to make, a bomb to decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A complete mode '1' PNG of width x height black pixels (~50 KB, 400 MB once decoded by Pillow)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def digit(size: int = 56, thickness: int = 6) -> Image.Image:
    return Image.fromarray(stroke_digit_one(size, thickness=thickness))


def large_digit_png(width: int, height: int) -> bytes:
    canvas = np.zeros((height, width), dtype=np.uint8)
    canvas[height // 4 : 3 * height // 4, width // 2 - 20 : width // 2 + 20] = 255
    return png_bytes(canvas)


def animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return buffer.getvalue()


def png_with_text_bomb() -> bytes:
    png = encode_image(Image.new("L", (28, 28)))
    bomb = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"a" * (16 * 1024 * 1024), 9))
    return png[:33] + bomb + png[33:]  # after the signature and IHDR


def bmp_with_bit_depth(bits: int) -> bytes:
    data = bytearray(encode_image(digit(28, 3), "BMP"))
    data[28:30] = struct.pack("<H", bits)
    return bytes(data)


JPEG = encode_image(digit(200, 20).convert("RGB"), "JPEG", quality=95)
PNG = encode_image(digit(200, 20))
RANDOM = np.random.default_rng(7).bytes(4096)
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
    b'<rect x="12" width="4" height="28" fill="white"/></svg>'
)
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
)


@dataclass(frozen=True)
class FileCase:
    filename: str
    data: bytes
    status: int
    needles: tuple[str, ...]

    def files(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [("files", (self.filename, self.data, "image/png"))]


FILE_CASES = {
    "zero-bytes-second-file": FileCase("empty.png", b"", 422, ("image 1 ('empty.png') is empty",)),  # sent after a valid file
    "truncated-png": FileCase("cut.png", PNG[: len(PNG) // 2], 422, ("image 0 ('cut.png') could not be decoded as PNG",)),
    "truncated-jpeg-in-scan": FileCase("cut.jpg", JPEG[: len(JPEG) * 3 // 4], 422, ("image 0 ('cut.jpg') could not be decoded as JPEG",)),
    "truncated-jpeg-in-header": FileCase("head.jpg", JPEG[:6], 422, ("image 0 ('head.jpg')",)),
    "truncated-png-in-ihdr": FileCase("head.png", PNG[:16], 422, ("image 0 ('head.png')",)),
    "webp-header-only": FileCase("head.webp", b"RIFFz\x00\x00\x00WEBPVP8 ", 422, ("image 0 ('head.webp')",)),
    "bmp-unsupported-bit-depth": FileCase("odd.bmp", bmp_with_bit_depth(7), 422, ("image 0 ('odd.bmp')",)),
    "png-text-chunk-bomb": FileCase("text.png", png_with_text_bomb(), 422, ("image 0 ('text.png')",)),
    "tiff-in-lab-mode": FileCase("lab.tiff", encode_image(digit().convert("LAB"), "TIFF"), 422, ("image 0 ('lab.tiff')",)),
    "random-bytes-as-png": FileCase("noise.png", RANDOM, 422, ("image 0 ('noise.png') is not a supported image",)),
    "text-file": FileCase("notes.txt", b"the digit is seven\n", 422, ("image 0 ('notes.txt') is not a supported image",)),
    "svg": FileCase("one.svg", SVG, 422, ("image 0 ('one.svg') is not a supported image",)),
    "pdf": FileCase("scan.pdf", PDF, 422, ("image 0 ('scan.pdf') is not a supported image",)),
    "bomb-20000x20000": FileCase("bomb.png", bomb_png(), 413, ("image 0 ('bomb.png')", "pixels")),
    "header-6000x5000": FileCase("big.png", crafted_png(6000, 5000), 413, ("image 0 ('big.png') has 6000x5000 = 30000000 pixels",)),
    "path-separators": FileCase("../../etc/passwd.png", b"root:x:0:0", 422, ("image 0 ('../../etc/passwd.png') is not a supported",)),
    "non-ascii-name": FileCase("数字.png", b"not an image", 422, ("image 0 ('数字.png') is not a supported image",)),
    "long-name": FileCase("x" * 996 + ".png", b"not an image", 422, (f"image 0 ('{'x' * 100}') is not a supported image",)),
}
TCP_CASES = (
    "truncated-jpeg-in-scan",
    "truncated-jpeg-in-header",
    "random-bytes-as-png",
    "bomb-20000x20000",
    "path-separators",
    "non-ascii-name",
    "long-name",
)


@pytest.mark.parametrize("name", list(FILE_CASES))
async def test_hostile_file_is_a_clear_4xx(client: httpx.AsyncClient, name: str) -> None:
    case = FILE_CASES[name]
    files = case.files()
    if name == "zero-bytes-second-file":
        files = [("files", ("ok.png", ONE, "image/png")), *files]
    message = assert_error(await send(client, "POST", "/predict", files=files), case.status, *case.needles)
    assert len(message) < 600, "a long file name must be truncated in the message"


async def test_decompression_bomb_is_refused_before_decoding(client: httpx.AsyncClient) -> None:
    process = psutil.Process()
    before = process.memory_info().rss
    started = asyncio.get_running_loop().time()
    response = await send(client, "POST", "/predict", files=FILE_CASES["bomb-20000x20000"].files())
    assert_error(response, 413, "image 0 ('bomb.png')")
    assert asyncio.get_running_loop().time() - started < 5.0
    assert process.memory_info().rss - before < 100 * 2**20, "the 400-megapixel image was decoded"


@pytest.mark.parametrize(("width", "status"), [(999, 200), (1000, 200), (1001, 413)])
async def test_pixel_limit_boundary(small_client: httpx.AsyncClient, width: int, status: int) -> None:
    response = await send(small_client, "POST", "/predict", files=[("files", ("wide.png", large_digit_png(width, 1000), "image/png"))])
    if status == 200:
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 1
    else:
        assert_error(response, 413, "image 0 ('wide.png') has 1001x1000 = 1001000 pixels, above the limit of 1000000")


async def seen_input(http: httpx.AsyncClient, filename: str, data: bytes) -> np.ndarray:
    response = await send(http, "POST", "/predict?model=resnet&include_input=true", files=[("files", (filename, data, "image/png"))])
    assert response.status_code == 200, response.text
    return np.array(response.json()["predictions"][0]["input"], dtype=np.float32)


async def test_animated_gif_uses_its_first_frame(client: httpx.AsyncClient) -> None:
    vertical = digit()
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    seen = await seen_input(client, "anim.gif", animated_gif(vertical, horizontal))
    np.testing.assert_allclose(seen, await seen_input(client, "first.png", encode_image(vertical)), atol=1e-4)
    assert np.abs(seen - await seen_input(client, "second.png", encode_image(horizontal))).max() > 0.5


async def test_sixteen_bit_png_is_read_like_eight_bit(client: httpx.AsyncClient) -> None:
    eight = stroke_digit_one(56, thickness=6)
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    np.testing.assert_allclose(
        await seen_input(client, "deep.png", encode_image(sixteen)), await seen_input(client, "flat.png", png_bytes(eight)), atol=1e-4
    )


async def test_cmyk_jpeg_is_read_like_rgb(client: httpx.AsyncClient) -> None:
    paper = Image.fromarray(255 - stroke_digit_one(112, thickness=12))
    cmyk = encode_image(paper.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    seen = await seen_input(client, "print.jpg", cmyk)
    reference = await seen_input(client, "photo.jpg", encode_image(paper.convert("RGB"), "JPEG", quality=95))
    assert np.abs(seen - reference).max() < 0.1


# --- multipart structure and limits -----------------------------------------------------


async def test_multipart_with_no_parts(client: httpx.AsyncClient) -> None:
    response = await send(client, "POST", "/predict", content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 422, "no parts named 'files'")


async def test_multipart_with_the_wrong_field_name(client: httpx.AsyncClient) -> None:
    response = await send(client, "POST", "/predict", files=[("image", ("one.png", ONE, "image/png"))])
    assert_error(response, 422, "no parts named 'files'; it has 'image'")


async def test_multipart_without_a_boundary(client: httpx.AsyncClient) -> None:
    response = await send(client, "POST", "/predict", content=b"whatever", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "multipart body could not be parsed")


async def test_multipart_part_without_a_name(client: httpx.AsyncClient) -> None:
    body = b"--b\r\nContent-Type: image/png\r\n\r\n" + ONE + b"\r\n--b--\r\n"
    response = await send(client, "POST", "/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 400, "a part has no Content-Disposition name")


async def test_multipart_cut_short_is_400(client: httpx.AsyncClient) -> None:
    """A body cut off inside its second part: an error, not a prediction for the first part alone."""
    body = multipart_body([("files", "one.png", ONE), ("files", "two.png", ONE)])
    cut = body[: body.index(b"two.png") + 40]
    response = await send(
        client, "POST", "/predict", content=cut, headers={"content-type": "multipart/form-data; boundary=hostile-boundary"}
    )
    assert_error(response, 400, "ends before its closing boundary")


async def test_more_text_fields_than_the_limit_is_413(small_client: httpx.AsyncClient) -> None:
    fields = {f"note{i}": "x" for i in range(5)}
    assert_error(
        await send(small_client, "POST", "/predict", data=fields, files=[("files", ("d.png", ONE, "image/png"))]), 413, "more than 4"
    )


@pytest.mark.parametrize("count", [5, 12])
async def test_more_files_than_the_limit_is_413(small_client: httpx.AsyncClient, count: int) -> None:
    files = [("files", (f"d{i}.png", ONE, "image/png")) for i in range(count)]
    # parsing stops at the first part over the limit: the message cannot know the total
    assert_error(await send(small_client, "POST", "/predict", files=files), 413, "more than 4 images, above the limit of 4")


async def test_file_over_the_file_limit_is_413(small_client: httpx.AsyncClient) -> None:
    big = [("files", ("ok.png", ONE, "image/png")), ("files", ("big.png", RANDOM * 30, "image/png"))]
    assert_error(
        await send(small_client, "POST", "/predict", files=big), 413, "image 1 ('big.png') has 122880 bytes, above the limit of 100000"
    )
    as_json = {"images": [base64.b64encode(RANDOM * 30).decode()]}
    assert_error(await send(small_client, "POST", "/predict", json=as_json), 413, "image 0 has 122880 bytes, above the limit of 100000")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_body_over_the_byte_limit_is_413(small_client: httpx.AsyncClient, kind: str, chunked: bool) -> None:
    if kind == "multipart":
        body = multipart_body([("files", f"n{i}.png", RANDOM * 30) for i in range(3)])  # within the file count limit
        content_type = "multipart/form-data; boundary=hostile-boundary"
    else:
        body = json.dumps({"images": [base64.b64encode(RANDOM * 25).decode()] * 3}).encode()
        content_type = "application/json"
    assert len(body) > SMALL_LIMITS["max_request_bytes"]
    content = trickle(body) if chunked else body
    response = await send(small_client, "POST", "/predict", content=content, headers={"content-type": content_type})
    assert_error(response, 413, "the request body is larger than the limit of 300000 bytes")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_v2_body_over_the_byte_limit_is_413_in_v2_form(small_client: httpx.AsyncClient, chunked: bool) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [400, 28, 28], "datatype": "FP32", "data": [0.5] * 400 * 784}]}).encode()
    assert len(body) > SMALL_LIMITS["max_request_bytes"]
    content = trickle(body) if chunked else body
    response = await send(small_client, "POST", "/v2/models/resnet/infer", content=content, headers={"content-type": "application/json"})
    assert_error(response, 413, "larger than the limit of 300000 bytes", key="error")


# --- JSON bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'"images"', "invalid JSON body"),
        (b"42", "invalid JSON body"),
        (b"null", "invalid JSON body"),
        (b'{"images": "iVBORw0KGgo="}', "invalid JSON body at images"),
        (b'{"images": [null]}', "invalid JSON body at images.0"),
        (b'{"images": {"0": "iVBORw0KGgo="}}', "invalid JSON body at images"),
        (b'{"images": ["iVBORw0KGgo="], "model": "resnet"}', "invalid JSON body at model"),
        (b"\xff\xfe{}", "invalid JSON body"),
        (b"[" * 10_000 + b"]" * 10_000, "invalid JSON body"),
    ],
    ids=["string", "number", "null", "images-a-string", "images-null-item", "images-an-object", "extra-key", "not-utf8", "nested-10000"],
)
async def test_json_of_the_wrong_shape_is_422(client: httpx.AsyncClient, body: bytes, needle: str) -> None:
    response = await send(client, "POST", "/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, needle)


async def test_invalid_base64_names_its_index(client: httpx.AsyncClient) -> None:
    images = [base64.b64encode(ONE).decode(), "data:image/png;base64,iVBORw0KGgo="]
    assert_error(await send(client, "POST", "/predict", json={"images": images}), 422, "image 1 is not valid base64")


async def test_base64_of_a_non_image_names_its_index(client: httpx.AsyncClient) -> None:
    images = [base64.b64encode(ONE).decode(), base64.b64encode(PDF).decode()]
    assert_error(await send(client, "POST", "/predict", json={"images": images}), 422, "image 1 is not a supported image")


async def test_missing_content_type_is_415(client: httpx.AsyncClient) -> None:
    assert_error(await send(client, "POST", "/predict", content=ONE), 415, "unsupported media type '(none)'")


@pytest.mark.parametrize("model", ["../../weights/resnet", "<script>alert(1)</script>", "m" * 1000, "resnet\x00"])
async def test_unknown_model_is_404_and_not_reflected_as_html(client: httpx.AsyncClient, model: str) -> None:
    response = await send(client, "POST", "/predict", params={"model": model}, json={"images": [base64.b64encode(ONE).decode()]})
    assert_error(response, 404, f"unknown model {model!r}")


# --- V2 -------------------------------------------------------------------------------------


def v2_body(data: Any, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (v2_body([0.0] * 784, [1, 1, 28, 27]), 400, "has shape [1, 1, 28, 27]"),
        (v2_body([0.0] * 784, [2, 2, 14, 28]), 400, "has shape [2, 2, 14, 28]"),
        (v2_body([], [0, 28, 28]), 400, "has shape [0, 28, 28]"),
        (v2_body([0.0] * 784, [-1, 28, 28]), 400, "has shape [-1, 28, 28]"),
        (v2_body([0.0], [513, 28, 28]), 413, "holds 513 images, above the limit of 512"),
        (v2_body([0.0], [10**30, 28, 28]), 413, "above the limit of 512"),
        (v2_body([0.0] * 784, [1, 28, 28], "FP64"), 400, "datatype FP64"),
        (v2_body([0.0] * 784, [1, 28, 28], "fp32"), 400, "datatype fp32"),
        (v2_body(["NaN"] + [0.0] * 783, [1, 28, 28]), 400, "NaN or infinity"),
        (v2_body([0.0] * 785, [1, 28, 28]), 400, "needs 784 values, got 785"),
        (v2_body([[0.0] * 28] * 27 + [[0.0] * 29], [1, 28, 28]), 400, "must be numbers"),
        (v2_body([{"value": 0.0}] * 784, [1, 28, 28]), 400, "must be numbers"),
        (v2_body([0.5] * 784, [1, 28, 28], "UINT8"), 400, "integers in 0..255"),
        (v2_body([-0.1] * 784, [1, 28, 28]), 400, "intensities in [0, 1]"),
        ({"inputs": [{"name": "input"}]}, 400, "shape"),
        ([v2_body([0.0] * 784, [1, 28, 28])], 400, "body"),
    ],
    ids=[
        "shape-27",
        "shape-2-channels",
        "shape-n0",
        "shape-negative",
        "too-many-images",
        "astronomical-n",
        "datatype-fp64",
        "datatype-lowercase",
        "nan-as-string",
        "data-too-long",
        "data-ragged",
        "data-objects",
        "uint8-fraction",
        "fp32-negative",
        "tensor-without-shape",
        "body-a-list",
    ],
)
async def test_v2_bad_tensor_is_a_v2_error(client: httpx.AsyncClient, body: Any, status: int, needle: str) -> None:
    assert_error(await send(client, "POST", "/v2/models/resnet/infer", json=body), status, needle, key="error")


def v2_text_body(first_value: str) -> bytes:
    """A 1x28x28 FP32 tensor as JSON text, so that literals Python's json would not write can be sent."""
    return (
        '{"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": [' + first_value + ", 0" * 783 + "]}]}"
    ).encode()


BIG_INTEGER_BODY = v2_text_body("1" + "0" * 400)


@pytest.mark.parametrize(
    "literal", ["1e999", "-1e999", "1" + "0" * 400], ids=["overflow-to-inf", "overflow-to-minus-inf", "400-digit-integer"]
)
async def test_v2_numbers_beyond_float_range_are_400(client: httpx.AsyncClient, literal: str) -> None:
    body = v2_text_body(literal)
    response = await send(client, "POST", "/v2/models/resnet/infer", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "input 'input'", key="error")


@pytest.mark.parametrize("path", ["/v2/models/..%2F..%2Fweights/infer", "/v2/models/%2e%2e/infer", "/v2/models/resnet%00/infer"])
async def test_v2_hostile_model_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await send(client, "POST", path, json=v2_body([0.0] * 784, [1, 28, 28]))
    assert_error(response, 404, key="error")


# --- no user input reaches a file path; no internal path reaches a client -------------------


def pwned_names() -> tuple[str, Path, Path]:
    """A unique traversal file name and the two places it would land if it were ever used as a path."""
    token = f"pwned-{uuid.uuid4().hex}.png"
    name = f"../../../../tmp/{token}"
    return name, Path("/tmp") / token, (ROOT / name).resolve()


@pytest.mark.parametrize("valid", [True, False], ids=["valid-image", "bad-image"])
async def test_a_traversal_file_name_creates_no_file(client: httpx.AsyncClient, valid: bool) -> None:
    name, in_tmp, from_root = pwned_names()
    weights_before = sorted(p.name for p in WEIGHTS.iterdir())
    response = await send(client, "POST", "/predict", files=[("files", (name, ONE if valid else b"junk", "image/png"))])
    if valid:
        assert response.status_code == 200, response.text
        assert name not in response.text
    else:
        assert_error(response, 422, f"image 0 ({name!r})")
    assert not in_tmp.exists() and not from_root.exists()
    assert sorted(p.name for p in WEIGHTS.iterdir()) == weights_before


# --- over real TCP ----------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tcp(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT_S) as http:
        yield http


@pytest.mark.parametrize("name", TCP_CASES)
async def test_hostile_file_over_tcp(tcp: httpx.AsyncClient, name: str) -> None:
    case = FILE_CASES[name]
    assert_error(await tcp.post("/predict", files=case.files()), case.status, *case.needles)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "needle", "key"),
    [
        ("/predict", b"{", "application/json", 422, "invalid JSON body", "detail"),
        ("/predict", b"x", "multipart/form-data", 400, "could not be parsed", "detail"),
        ("/v2/models/resnet/infer", b"[1]", "application/json", 400, "body", "error"),
        ("/v2/models/resnet/infer", BIG_INTEGER_BODY, "application/json", 400, "input 'input'", "error"),
    ],
    ids=["predict-broken-json", "predict-no-boundary", "v2-list-body", "v2-400-digit-integer"],
)
async def test_hostile_body_over_tcp(
    tcp: httpx.AsyncClient, path: str, body: bytes, content_type: str, status: int, needle: str, key: str
) -> None:
    assert_error(await tcp.post(path, content=body, headers={"content-type": content_type}), status, needle, key=key)


async def test_traversal_file_name_over_tcp_creates_no_file(tcp: httpx.AsyncClient) -> None:
    name, in_tmp, from_root = pwned_names()
    assert (await tcp.post("/predict", files=[("files", (name, ONE, "image/png"))])).status_code == 200
    assert_error(await tcp.post("/predict", files=[("files", (name, b"junk", "image/png"))]), 422, f"image 0 ({name!r})")
    assert not in_tmp.exists() and not from_root.exists()


async def test_live_server_still_correct_after_hostile_input(tcp: httpx.AsyncClient) -> None:
    assert (await tcp.get("/readyz")).status_code == 200
    first, second = [await tcp.post("/predict?model=ensemble", files=[("files", ("one.png", ONE, "image/png"))]) for _ in range(2)]
    assert first.status_code == 200 and first.json() == second.json()


# --- afterwards --------------------------------------------------------------------------------


async def test_still_answers_correctly_after_every_hostile_input(app_client: tuple[httpx.AsyncClient, Reference]) -> None:
    """Runs last in this module: the in-process app that took every hostile input above answers as before."""
    http, reference = app_client
    assert (await send(http, "GET", "/readyz")).status_code == 200
    response = await send(http, "POST", "/predict?model=resnet&include_input=true", files=[("files", ("one.png", ONE, "image/png"))])
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    (expected,) = reference.predictions
    assert prediction["label"] == expected["label"]
    np.testing.assert_allclose(prediction["probabilities"], expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose(prediction["input"], expected["input"], atol=1e-6)
