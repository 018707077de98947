"""``POST /read`` through HTTP (the real server over TCP): written numbers of MNIST test digits,
errors identical to /predict's, the Python clients and the ``digits read`` command."""

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from core.preprocess import decode_upright
from core.segment import segment
from digits_client import AsyncClient, Client, DigitsHTTPError, ReadResponse
from digits_client.cli import main
from evaluation import corpus, mnist, numbers
from tests.conftest import LiveServer, encode_image, png_bytes, start_server, stop_server, stroke_digit_one

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_digits(data_dir: Path) -> mnist.Digits:
    return mnist.load(data_dir, train=False)


def written(test_digits: mnist.Digits, count: int, *, touching: bool, style: str = "paper", seed: int = 11) -> list[tuple[bytes, str]]:
    """``count`` numbers of MNIST test digits rendered in ``style`` (all with one touching pair, or none), and their digits."""
    specs = numbers.number_specs(20 * count, len(test_digits), seed)
    chosen = [spec for spec in specs if (spec.touching >= 0) == touching and len(spec.indices) <= 6][:count]
    assert len(chosen) == count
    return [
        (
            numbers.render_number(style, test_digits.images[list(spec.indices)], spec.touching, corpus.style_rng(seed, style, i)),
            "".join(str(int(test_digits.labels[j])) for j in spec.indices),
        )
        for i, spec in enumerate(chosen)
    ]


def parts(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)]


def post_read(server: LiveServer, images: list[bytes], **params: str) -> dict[str, Any]:
    response = httpx.post(server.url + "/read", files=parts(images), params=params, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_numbers_are_read_left_to_right(live_server: LiveServer, test_digits: mnist.Digits) -> None:
    samples = written(test_digits, 12, touching=False)
    body = post_read(live_server, [data for data, _ in samples])
    ReadResponse.model_validate(body)
    assert body["model"] == "ensemble"
    readings = body["readings"]
    assert len(readings) == len(samples)
    exact = sum(reading["text"] == truth for reading, (_, truth) in zip(readings, samples, strict=True))
    assert exact >= 11, [(r["text"], t) for r, (_, t) in zip(readings, samples, strict=True)]
    for reading, (data, _) in zip(readings, samples, strict=True):
        width, height = Image.open(io.BytesIO(data)).size
        boxes = [digit["box"] for digit in reading["digits"]]
        assert all(0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in boxes)
        assert [box[0] for box in boxes] == sorted(box[0] for box in boxes)
        confident = [digit["confidence"] for digit in reading["digits"] if digit["is_digit"]]
        assert reading["text"] == "".join(str(d["label"]) for d in reading["digits"] if d["is_digit"])
        assert reading["confidence"] == pytest.approx(float(np.prod(confident)), rel=1e-6)


def test_touching_pairs_are_split(live_server: LiveServer, test_digits: mnist.Digits) -> None:
    """Read whole, a touching pair is one glyph and the number a digit short; cut, most read right."""
    samples = written(test_digits, 10, touching=True, style="scan-clean")
    readings = post_read(live_server, [data for data, _ in samples])["readings"]
    exact = sum(reading["text"] == truth for reading, (_, truth) in zip(readings, samples, strict=True))
    assert exact >= 5, [(r["text"], t) for r, (_, t) in zip(readings, samples, strict=True)]


def test_multipart_and_json_read_alike_and_blank_images_read_empty(live_server: LiveServer, test_digits: mnist.Digits) -> None:
    (number, _), (other, _) = written(test_digits, 2, touching=False, style="canvas-rgba")
    blank = encode_image(Image.new("RGB", (300, 100), (255, 255, 255)))
    images = [number, blank, other]
    by_parts = post_read(live_server, images, model="resnet")
    response = httpx.post(
        live_server.url + "/read?model=resnet", json={"images": [base64.b64encode(d).decode() for d in images]}, timeout=60
    )
    assert response.status_code == 200
    assert response.json() == by_parts
    readings = by_parts["readings"]
    assert by_parts["model"] == "resnet"
    assert readings[1] == {"text": "", "confidence": 1.0, "digits": []}
    assert readings[0]["text"] and readings[2]["text"]


def test_a_single_mnist_digit_reads_as_predict_classifies_it(live_server: LiveServer, test_digits: mnist.Digits) -> None:
    images = [png_bytes(test_digits.images[i]) for i in range(8)]
    readings = post_read(live_server, images)["readings"]
    predicted = httpx.post(live_server.url + "/predict", files=parts(images), timeout=60).json()["predictions"]
    assert [r["text"] for r in readings] == [str(p["label"]) for p in predicted]
    for reading in readings:
        (x0, y0, x1, y1), *_ = [digit["box"] for digit in reading["digits"] if digit["is_digit"]]
        assert 0 <= x0 < x1 <= 28 and 0 <= y0 < y1 <= 28


ONE = png_bytes(stroke_digit_one())
BAD_REQUESTS: dict[str, dict[str, object]] = {
    "not an image": {"files": [("files", ("notes.png", b"not a picture", "image/png"))]},
    "an empty file": {"files": [("files", ("a.png", ONE, "image/png")), ("files", ("empty.png", b"", "image/png"))]},
    "no files part": {"files": [("images", ("a.png", ONE, "image/png"))]},
    "files as a text field": {"data": {"files": "abc"}, "files": [("other", ("a.png", ONE, "image/png"))]},
    "bad base64": {"json": {"images": ["@@@"]}},
    "no images": {"json": {"images": []}},
    "an unknown field": {"json": {"images": [base64.b64encode(ONE).decode()], "extra": 1}},
    "not JSON": {"content": b"{nope", "headers": {"content-type": "application/json"}},
    "a wrong media type": {"content": b"abc", "headers": {"content-type": "text/plain"}},
    "no boundary": {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
    "a truncated multipart body": {
        "content": b'--x\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n\r\nab',
        "headers": {"content-type": "multipart/form-data; boundary=x"},
    },
    "too many images": {"files": [("files", (f"{i}.png", ONE, "image/png")) for i in range(513)]},
    "an image too large": {"files": [("files", ("big.png", b"\x89PNG" + bytes(8 * 1024 * 1024), "image/png"))]},
    "too many pixels": {"files": [("files", ("huge.png", encode_image(Image.new("1", (6000, 5000))), "image/png"))]},
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_errors_are_those_of_predict(live_server: LiveServer, case: str) -> None:
    request = BAD_REQUESTS[case]
    answers = [httpx.post(live_server.url + path, timeout=60, **request) for path in ("/predict", "/read")]  # type: ignore[arg-type]
    predicted, read = answers
    assert 400 <= read.status_code < 500, read.text
    assert (read.status_code, read.json()) == (predicted.status_code, predicted.json())


def test_an_unknown_model_is_404_as_for_predict(live_server: LiveServer) -> None:
    answers = [
        httpx.post(live_server.url + path, params={"model": "lenet"}, files=parts([ONE]), timeout=30) for path in ("/predict", "/read")
    ]
    assert answers[1].status_code == 404 and answers[1].json() == answers[0].json()
    assert "lenet" in answers[1].json()["detail"]


def test_read_is_behind_the_api_key_and_reads_more_pieces_than_a_request_holds_images(
    tmp_path: Path, live_server: LiveServer, test_digits: mnist.Digits
) -> None:
    """With at most 3 images per request, a 6-digit number's pieces go to the model 3 at a time: the same readings."""
    numbers_ = written(test_digits, 3, touching=True)
    expected = post_read(live_server, [data for data, _ in numbers_])
    server = start_server(tmp_path, DIGITS_API_KEY="secret", DIGITS_MAX_IMAGES_PER_REQUEST="3")
    try:
        refused = httpx.post(server.url + "/read", files=parts([ONE]), timeout=30)
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["detail"]
        key = {"X-API-Key": "secret"}
        allowed = httpx.post(server.url + "/read", files=parts([ONE]), headers=key, timeout=30)
        assert allowed.status_code == 200 and allowed.json()["readings"][0]["text"] == "1"
        answer = httpx.post(server.url + "/read", files=parts([data for data, _ in numbers_]), headers=key, timeout=60)
        assert answer.status_code == 200
        assert [r["text"] for r in answer.json()["readings"]] == [r["text"] for r in expected["readings"]]
        assert sum(len(segment(*decode_upright(data, max_pixels=10**8)).pieces()) for data, _ in numbers_) > 3 * len(numbers_)
    finally:
        stop_server(server)


def test_the_api_documents_read(live_server: LiveServer) -> None:
    schema = httpx.get(live_server.url + "/openapi.json", timeout=30).json()
    operation = schema["paths"]["/read"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"404", "413", "415", "422", "503"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    for name in ("ReadResponse", "Reading", "DigitReading"):
        for field, spec in components[name]["properties"].items():
            assert spec.get("description") or (name, field) == ("ReadResponse", "model"), (name, field)


# The clients and the command line ---------------------------------------------------


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, timeout=60) as c:
        yield c


def test_client_read_gives_the_servers_readings(client: Client, live_server: LiveServer, test_digits: mnist.Digits, tmp_path: Path) -> None:
    samples = written(test_digits, 3, touching=False)
    paths = []
    for i, (data, _) in enumerate(samples):
        paths.append(tmp_path / f"number-{i}.img")
        paths[-1].write_bytes(data)
    expected = post_read(live_server, [data for data, _ in samples], model="inception")
    response = client.read(paths, model="inception")
    assert isinstance(response, ReadResponse)
    assert response.model_dump(mode="json") == expected
    assert client.read(paths[0]).readings[0].text == response.readings[0].text  # one image, the default model
    with pytest.raises(DigitsHTTPError) as error:
        client.read([paths[0], b"not a picture"])
    assert error.value.status_code == 422 and "image 1" in str(error.value)


async def test_async_client_read(live_server: LiveServer, test_digits: mnist.Digits) -> None:
    samples = written(test_digits, 2, touching=False)
    async with AsyncClient(live_server.url, timeout=60) as client:
        response = await client.read([data for data, _ in samples])
    assert [r.text for r in response.readings] == [r["text"] for r in post_read(live_server, [d for d, _ in samples])["readings"]]


def test_cli_read(live_server: LiveServer, test_digits: mnist.Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "numbers"
    folder.mkdir()
    samples = written(test_digits, 3, touching=False)
    for i, (data, _) in enumerate(samples):
        (folder / f"{i}.jpg").write_bytes(data)
    (folder / "blank.png").write_bytes(encode_image(Image.new("L", (200, 80), 255)))
    expected = post_read(live_server, [(folder / name).read_bytes() for name in ("0.jpg", "1.jpg", "2.jpg", "blank.png")])["readings"]

    assert main(["read", str(folder), "--url", live_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "number", "confidence", "digits"]
    for line, reading in zip(lines[1:], expected, strict=True):
        assert line.split()[1] == (reading["text"] or "-")
    assert lines[-1].endswith("no ink")

    assert main(["read", str(folder), "--url", live_server.url, "--json", "--batch-size", "2"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"] == "ensemble"
    assert [r["file"] for r in body["readings"]] == [str(folder / n) for n in ("0.jpg", "1.jpg", "2.jpg", "blank.png")]
    assert [{k: v for k, v in r.items() if k != "file"} for r in body["readings"]] == expected

    bad = tmp_path / "bad.png"
    bad.write_text("no picture")
    assert main(["read", str(bad), "--url", live_server.url]) == 1
    assert "image 0 ('bad.png') is not a supported image" in capsys.readouterr().err
    assert main(["read"]) == 2
