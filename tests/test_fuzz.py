"""Fuzzing: schemathesis against the app's own OpenAPI schema, hypothesis against preprocessing.

Bounded for CI: a fixed number of examples per operation and per property, derandomised
(the same inputs every run, so a red build is reproducible), and a wall-clock cap per test.

Schemathesis runs against the real server (``python -m service``) on loopback rather
than over ASGI: schemathesis 4's pytest plugin ends an ASGI app's lifespan after every
test item, so each operation would restart and re-warm the models and meet 503s while
warming up; and its fixture-based lazy loader does not work with this pytest. The schema
it fuzzes is the one the app itself serves at /openapi.json (checked equal to the live
server's below).
"""

import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.errors import InputError
from core.preprocess import ALLOWED_FORMATS, decode_image, to_mnist
from models.registry import SERVED_MODELS
from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS, LiveServer, encode_image, start_server, stop_server, stroke_digit_one

# --- schemathesis ---------------------------------------------------------------------

OPENAPI = create_app(Settings(weights_dir=WEIGHTS)).openapi()  # what GET /openapi.json serves; no models loaded
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)

FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,  # the machine is shared with a training run; latency is not what this test measures
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("fuzz"), DIGITS_WARMUP_BATCHES="1", DIGITS_REQUEST_TIMEOUT_S="20")
    yield server
    stop_server(server)


def test_the_fuzzed_schema_is_the_one_the_server_serves(fuzz_server: LiveServer) -> None:
    assert httpx.get(fuzz_server.url + "/openapi.json", timeout=10).json() == OPENAPI


def _aim_at_served_models(case: schemathesis.Case[Any]) -> None:
    """Random model names almost always stop at 404 before the body is read; aim 3 in 4 at real models.

    Which one is derived from the generated name, so the rewrite is deterministic and shrinks with it.
    """
    for container, key in ((case.path_parameters, "name"), (case.query, "model")):
        value = container.get(key) if container else None
        if isinstance(value, str) and value not in SERVED_MODELS and len(value) % 4 != 0:
            container[key] = SERVED_MODELS[len(value) % len(SERVED_MODELS)]


@pytest.mark.timeout(150)
@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_operation_conforms_and_never_fails_on_the_server(case: schemathesis.Case[Any], fuzz_server: LiveServer) -> None:
    """Every check schemathesis has, except positive_data_acceptance.

    That one says "schema-valid data must get 2xx", but the schema cannot say "these bytes must be
    a decodable image with a digit" (/predict) or "data must hold prod(shape) numbers in range"
    (/v2/.../infer): the documented 4xx for such input is the contract, and test_hostile_inputs
    asserts it input by input.
    """
    _aim_at_served_models(case)
    response = case.call_and_validate(base_url=fuzz_server.url, timeout=30, excluded_checks=[positive_data_acceptance])
    text = response.text
    assert "Traceback" not in text and 'File "/' not in text and "site-packages" not in text, text


def test_the_fuzzed_server_is_still_healthy_and_correct(fuzz_server: LiveServer) -> None:
    """Runs after the fuzzing: the server answers as it should, and the fuzzing reached the bodies."""
    seen = Counter((line["route"], line["status"]) for line in access_log(fuzz_server))
    print("fuzzed (route, status): count", dict(sorted(seen.items())))
    for route in ("/predict", "/v2/models/{name}/infer"):
        assert sum(n for (r, status), n in seen.items() if r == route and status not in (404, 405)) >= 20, route
    assert not [(route, status) for route, status in seen if status >= 500 and route != "/readyz"]  # /readyz: 503 while starting
    one = encode_image(Image.fromarray(stroke_digit_one()))
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        first, second = (http.post("/predict?model=resnet", files=[("files", ("one.png", one, "image/png"))]) for _ in range(2))
    assert first.status_code == 200 and second.status_code == 200
    assert first.json()["predictions"] == second.json()["predictions"]  # deterministic: no state leaked between requests
    assert sum(first.json()["predictions"][0]["probabilities"]) == pytest.approx(1.0, abs=1e-4)


def access_log(server: LiveServer) -> list[dict[str, Any]]:
    lines = (line for line in server.log().splitlines() if line.startswith('{"request_id"'))
    return [json.loads(line) for line in lines]


# --- hypothesis: preprocessing ----------------------------------------------------------

PIXEL_LIMIT = 1_000_000
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Every mode decode_image can hand to to_mnist from an allowed format (TIFF alone stores most of them).
MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16B", "F")


def assert_mnist_array(result: np.ndarray) -> None:
    assert isinstance(result, np.ndarray)
    assert result.shape == (28, 28) and result.dtype == np.float32
    assert np.isfinite(result).all()
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0


def assert_client_error(exc: InputError) -> None:
    assert 400 <= exc.status_code < 500 and exc.message, (exc.status_code, exc.message)


def prepared_or_refused(data: bytes, max_pixels: int = PIXEL_LIMIT) -> np.ndarray | None:
    """decode_image + to_mnist; None when refused with InputError. Any other exception fails the test."""
    try:
        result = to_mnist(decode_image(data, max_pixels=max_pixels))
    except InputError as exc:
        assert_client_error(exc)
        return None
    except Exception as exc:  # the bug itself: say which bytes, since hypothesis may not print them
        exc.add_note(f"input ({len(data)} bytes): {data[:120]!r}{'...' if len(data) > 120 else ''}")
        raise
    assert_mnist_array(result)
    return result


def to_mnist_or_refused(image: Image.Image) -> np.ndarray | None:
    try:
        result = to_mnist(image)
    except InputError as exc:
        assert_client_error(exc)
        return None
    except Exception as exc:
        exc.add_note(f"input: a {image.mode} image of {image.size[0]}x{image.size[1]} pixels")
        raise
    assert_mnist_array(result)
    return result


sides = st.integers(min_value=1, max_value=48)


@st.composite
def pil_images(draw: st.DrawFn) -> Image.Image:
    """Images of every decodable mode, built from arbitrary arrays (noise, flat, extremes, NaN for F)."""
    height, width = draw(sides), draw(sides)
    kind = draw(st.sampled_from(["uint8", "uint16", "uint16be", "int32", "float32", "rgb", "rgba"]))
    if kind in ("uint16", "uint16be"):  # modes I;16 and I;16B
        return Image.fromarray(draw(arrays(np.uint16 if kind == "uint16" else np.dtype(">u2"), (height, width))))
    if kind == "int32":
        return Image.fromarray(draw(arrays(np.int32, (height, width))))
    if kind == "float32":
        return Image.fromarray(draw(arrays(np.float32, (height, width), elements=st.floats(width=32, allow_nan=True))))
    channels = {"uint8": None, "rgb": 3, "rgba": 4}[kind]
    shape = (height, width) if channels is None else (height, width, channels)
    image = Image.fromarray(draw(arrays(np.uint8, shape)))
    return image.convert(draw(st.sampled_from(MODES)))


@PROPERTY_SETTINGS
@given(image=pil_images())
@example(image=Image.fromarray(stroke_digit_one(40, thickness=4)).convert("LAB"))
def test_to_mnist_of_any_image_is_a_valid_input_or_an_input_error(image: Image.Image) -> None:
    to_mnist_or_refused(image)


@PROPERTY_SETTINGS
@given(image=pil_images(), fmt=st.sampled_from(ALLOWED_FORMATS))
def test_any_encoded_image_decodes_to_a_valid_input_or_an_input_error(image: Image.Image, fmt: str) -> None:
    try:
        data = encode_image(image, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return  # this format cannot store this mode; nothing to decode
    prepared_or_refused(data)


@PROPERTY_SETTINGS
@given(height=sides, width=sides, max_pixels=st.integers(min_value=1, max_value=48 * 48))
def test_the_pixel_limit_is_exact(height: int, width: int, max_pixels: int) -> None:
    data = encode_image(Image.fromarray(stroke_digit_one(48, thickness=6)).resize((width, height)))
    if width * height > max_pixels:
        with pytest.raises(InputError) as info:
            decode_image(data, max_pixels=max_pixels)
        assert info.value.status_code == 413 and f"{width}x{height}" in info.value.message
    else:
        assert decode_image(data, max_pixels=max_pixels).size == (width, height)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused_or_decoded(data: bytes) -> None:
    prepared_or_refused(data)


SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00", b"MM\x00*")


@PROPERTY_SETTINGS
@given(signature=st.sampled_from(SIGNATURES), rest=st.binary(max_size=2048))
def test_random_bytes_behind_an_image_signature_are_refused_or_decoded(signature: bytes, rest: bytes) -> None:
    prepared_or_refused(signature + rest)


_DIGIT = Image.fromarray(stroke_digit_one(32, thickness=4))
FILES = {fmt: encode_image(_DIGIT, fmt) for fmt in ALLOWED_FORMATS} | {
    "progressive JPEG": encode_image(_DIGIT.convert("RGB"), "JPEG", progressive=True),
    "CMYK JPEG": encode_image(_DIGIT.convert("CMYK"), "JPEG"),
    "transparent PNG": encode_image(_DIGIT.convert("P"), "PNG", transparency=0),
    "animated GIF": encode_image(_DIGIT, "GIF", save_all=True, append_images=[_DIGIT.transpose(Image.Transpose.ROTATE_90)]),
}
VALID_FILES = list(FILES.values())


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid image file, then truncated, with bytes overwritten and/or with bytes inserted."""
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_text_bomb() -> bytes:
    """A 1x1 PNG whose zTXt chunk inflates past Pillow's MAX_TEXT_CHUNK (a ValueError inside Image.open)."""
    png = encode_image(Image.new("L", (1, 1)))
    bomb = _png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"a" * (16 * 1024 * 1024), 9))
    return png[:33] + bomb + png[33:]  # after the signature (8) and IHDR (25)


def _bmp_with_bit_depth(bits: int) -> bytes:
    data = bytearray(FILES["BMP"])
    data[28:30] = struct.pack("<H", bits)  # biBitCount in the BITMAPINFOHEADER
    return bytes(data)


@PROPERTY_SETTINGS
@given(data=mutated_files())
@example(data=FILES["JPEG"][:200])  # JPEG cut inside its header: OSError "Truncated File Read"
@example(data=_bmp_with_bit_depth(7))  # OSError "Unsupported BMP pixel depth"
@example(data=_png_with_text_bomb())  # ValueError "Decompressed data too large"
def test_corrupted_image_files_are_refused_or_decoded(data: bytes) -> None:
    prepared_or_refused(data)
