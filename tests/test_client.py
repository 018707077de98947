"""The Python client and the ``digits`` CLI against the real server over TCP, and its retries offline.

The committed weights may be small placeholders, so no test asserts which digit is read:
they compare with what a plain /predict call answers for the same image, and check
structure, order, counts and errors.
"""

import asyncio
import functools
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import digits_client.cli
import digits_client.client
from digits_client import (
    AsyncClient,
    Client,
    DigitsConnectionError,
    DigitsError,
    DigitsHTTPError,
    DigitsInputError,
    DigitsTimeoutError,
    ImageInput,
    ModelInfoResponse,
    Prediction,
    PredictResponse,
)
from digits_client._retry import RetryPolicy
from digits_client.cli import main
from digits_client.errors import parse_retry_after
from digits_client.images import gray_png
from tests.conftest import ROOT, LiveServer, free_port, png_bytes, start_server, stop_server, stroke_digit_one

MODELS = {"inception", "resnet", "ensemble"}


def ring(size: int = 28) -> np.ndarray:
    """A hollow ellipse, zero-like."""
    y, x = np.mgrid[:size, :size]
    r = ((x - size / 2 + 0.5) / 6) ** 2 + ((y - size / 2 + 0.5) / 9) ** 2
    return ((r > 0.6) & (r < 1.0)).astype(np.uint8) * 255


def bar(size: int = 28) -> np.ndarray:
    """A horizontal stroke with a hook, seven-like."""
    image = np.zeros((size, size), dtype=np.uint8)
    image[6:9, 6:22] = 255
    for row in range(9, 23):
        column = 21 - (row - 9) // 2
        image[row, column - 1 : column + 2] = 255
    return image


def cross(size: int = 28) -> np.ndarray:
    """Two crossed strokes, four-ish."""
    image = np.zeros((size, size), dtype=np.uint8)
    image[5:23, 15:18] = 255
    image[14:17, 6:22] = 255
    image[5:16, 6:9] = 255
    return image


def one(size: int = 28) -> np.ndarray:
    return stroke_digit_one(size)


def direct(server: LiveServer, *images: np.ndarray, **params: str) -> dict[str, Any]:
    """What a plain multipart /predict call answers: the reference the client must reproduce."""
    files = [("files", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)]
    response = httpx.post(server.url + "/predict", files=files, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same(prediction: Prediction, expected: dict[str, Any]) -> None:
    assert prediction.label == expected["label"]
    # the dynamic batcher may group the images differently, which moves the last float bits
    assert prediction.probabilities == pytest.approx(expected["probabilities"], abs=1e-4)


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, timeout=30) as c:
        yield c


# Inputs ------------------------------------------------------------------------------


def test_each_input_kind_gives_the_direct_answer(client: Client, live_server: LiveServer, tmp_path: Path) -> None:
    image = one()
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(image))
    expected = direct(live_server, image)["predictions"][0]
    opened = Image.open(path)
    kinds: dict[str, ImageInput] = {
        "str path": str(path),
        "Path": path,
        "bytes": png_bytes(image),
        "bytearray": bytearray(png_bytes(image)),
        "binary file": io.BytesIO(png_bytes(image)),
        "PIL image": Image.fromarray(image),
        "opened PIL image": opened,
        "uint8 array": image,
        "float array": image.astype(np.float32) / 255,
        "float64 array": image / 255.0,
        "int64 array": image.astype(np.int64),
        "bool array": image > 0,
    }
    for kind, item in kinds.items():
        response = client.predict(item)
        assert type(response) is PredictResponse, kind
        assert len(response.predictions) == 1, kind
        assert type(response.predictions[0]) is Prediction
        assert_same(response.predictions[0], expected)
    opened.close()


def test_a_mixed_list_keeps_its_order(client: Client, live_server: LiveServer, tmp_path: Path) -> None:
    images = [one(), ring(), bar(), cross(), ring()]
    expected = direct(live_server, *images)["predictions"]
    assert len({tuple(np.round(p["probabilities"], 3)) for p in expected}) >= 3  # distinct enough to detect a reorder
    path = tmp_path / "first.png"
    path.write_bytes(png_bytes(images[0]))
    mixed: list[ImageInput] = [path, png_bytes(images[1]), Image.fromarray(images[2]), images[3], images[4].astype(np.float64) / 255]
    response = client.predict(mixed)
    assert len(response.predictions) == len(images)
    for prediction, reference in zip(response.predictions, expected, strict=True):
        assert_same(prediction, reference)
    assert client.predict(tuple(mixed)).model == response.model


def test_model_selection_and_default(client: Client, live_server: LiveServer) -> None:
    info = client.model_info()
    assert {m.name for m in info.models} == MODELS
    assert client.predict(one()).model == info.default_model
    for name in sorted(MODELS):
        response = client.predict([one(), ring()], model=name)
        assert response.model == name
        for prediction, reference in zip(response.predictions, direct(live_server, one(), ring(), model=name)["predictions"], strict=True):
            assert_same(prediction, reference)


def test_include_input(client: Client) -> None:
    assert client.predict(one()).predictions[0].input is None
    seen = client.predict([one(), ring()], include_input=True).predictions
    for prediction in seen:
        assert prediction.input is not None
        assert np.asarray(prediction.input).shape == (28, 28)
    assert np.asarray(seen[0].input).max() == pytest.approx(1.0)
    assert np.asarray(seen[0].input) == pytest.approx(one() / 255, abs=1e-3)  # white on black 28x28 passes through untouched


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (np.zeros((2, 28, 28), np.uint8), r"list\(array\)"),
        (np.full((28, 28), 1.5), r"\[0, 1\]"),
        (np.full((28, 28), np.nan, np.float32), r"\[0, 1\]"),
        (np.full((28, 28), 300), "0 .. 255"),
        (np.zeros((28, 28), np.complex64), "dtype"),
        (12, "unsupported type int"),
        ("no/such/file.png", "cannot read"),
        ([], "no images"),
    ],
)
def test_bad_local_input_fails_before_sending(item: object, message: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with Client(transport=httpx.MockTransport(refuse)) as c, pytest.raises(DigitsInputError, match=message) as caught:
        c.predict(item)  # type: ignore[arg-type]
    assert isinstance(caught.value, DigitsError) and isinstance(caught.value, ValueError)


# Server errors -------------------------------------------------------------------------


def test_a_bad_image_raises_with_the_server_message(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"not a picture")
    with pytest.raises(DigitsHTTPError) as caught:
        client.predict([one(), path])
    error = caught.value
    assert error.status_code == 422
    assert "is not a supported image" in error.detail and "image 1 ('x.png')" in error.detail
    assert str(error) == f"422: {error.detail}"
    assert isinstance(error, DigitsError)


def test_an_unknown_model_raises_404(client: Client) -> None:
    with pytest.raises(DigitsHTTPError) as caught:
        client.predict(one(), model="lenet")
    assert caught.value.status_code == 404
    assert "unknown model 'lenet'" in caught.value.detail


def test_probes(client: Client) -> None:
    assert client.ready() is True
    assert client.healthy() is True
    assert type(client.model_info()) is ModelInfoResponse


def test_an_unreachable_server(tmp_path: Path) -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0, timeout=5) as c:
        assert c.ready() is False
        assert c.healthy() is False
        with pytest.raises(DigitsConnectionError, match="after 2 attempts"):
            c.predict(one())


def test_api_key(tmp_path: Path) -> None:
    server = start_server(tmp_path, DIGITS_API_KEY="k")
    try:
        with Client(server.url) as anonymous, pytest.raises(DigitsHTTPError) as caught:
            anonymous.predict(one())
        assert caught.value.status_code == 401 and "X-API-Key" in caught.value.detail
        with Client(server.url, api_key="wrong") as wrong, pytest.raises(DigitsHTTPError, match="401"):
            wrong.predict(one())
        with Client(server.url, api_key="k") as keyed:
            assert len(keyed.predict([one(), ring()]).predictions) == 2
        assert main(["predict", "--url", server.url, "--api-key", "k", str(write(tmp_path / "a.png", one()))]) == 0
    finally:
        stop_server(server)


# Retries (offline, through httpx.MockTransport) ---------------------------------------

OK_BODY = {"model": "resnet", "predictions": [{"label": 3, "confidence": 0.5, "probabilities": [0.05] * 9 + [0.55]}]}


class Script:
    """A MockTransport handler that answers from a list and records each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def busy(retry_after: str | None = "0") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json={"detail": "the models are still warming up"}, headers=headers)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between attempts, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)

    async def async_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(digits_client.client, "_async_sleep", async_sleep)
    return waited


def test_503_is_retried_honouring_retry_after(sleeps: list[float]) -> None:
    script = Script(busy("0"), busy("2"), httpx.Response(200, json=OK_BODY))
    with Client(transport=httpx.MockTransport(script), api_key="k", jitter=0) as c:
        response = c.predict(one(), model="resnet")
    assert len(script.requests) == 3
    assert sleeps == [2.0]  # Retry-After: 0 means at once
    assert response.model == "resnet" and response.predictions[0].label == 3
    request = script.requests[-1]
    assert request.url.path == "/predict" and request.url.params["model"] == "resnet"
    assert request.headers["X-API-Key"] == "k" and request.headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="files"; filename="array.png"' in request.read()


def test_without_retry_after_the_backoff_doubles(sleeps: list[float]) -> None:
    script = Script(busy(None), busy("soon"), busy(None), httpx.Response(200, json=OK_BODY))
    with Client(transport=httpx.MockTransport(script), backoff=0.25, jitter=0) as c:
        c.predict(one())
    assert sleeps == [0.25, 0.5, 1.0]


def test_retries_run_out(sleeps: list[float]) -> None:
    script = Script(busy("0"))
    with Client(transport=httpx.MockTransport(script), retries=2) as c, pytest.raises(DigitsHTTPError) as caught:
        c.predict(one())
    assert len(script.requests) == 3
    assert caught.value.status_code == 503 and caught.value.detail == "the models are still warming up"
    assert caught.value.retry_after == 0


def test_client_errors_and_500_are_not_retried(sleeps: list[float]) -> None:
    for status in (400, 401, 404, 413, 422, 500):
        script = Script(httpx.Response(status, json={"detail": f"status {status}"}, headers={"Retry-After": "0"}))
        with Client(transport=httpx.MockTransport(script)) as c, pytest.raises(DigitsHTTPError, match=f"^{status}: status {status}$"):
            c.predict(one())
        assert len(script.requests) == 1
    assert sleeps == []


def test_a_non_json_error_body_is_kept() -> None:
    script = Script(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with Client(transport=httpx.MockTransport(script), retries=0) as c, pytest.raises(DigitsHTTPError, match=r"^502: <html>Bad Gateway"):
        c.model_info()


def test_connection_errors_are_retried(sleeps: list[float]) -> None:
    script = Script(httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed"), httpx.Response(200, json=OK_BODY))
    with Client(transport=httpx.MockTransport(script), backoff=0.1, jitter=0) as c:
        assert len(c.predict(one()).predictions) == 1
    assert len(script.requests) == 3 and sleeps == [0.1, 0.2]


def test_read_timeouts_are_not_retried(sleeps: list[float]) -> None:
    script = Script(httpx.ReadTimeout("slow"))
    with Client(transport=httpx.MockTransport(script)) as c, pytest.raises(DigitsTimeoutError):
        c.predict(one())
    assert len(script.requests) == 1


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("nonsense") is None
    assert parse_retry_after(None) is None


def test_jitter_stretches_the_wait_but_never_below_retry_after() -> None:
    def policy(draw: float) -> RetryPolicy:
        return RetryPolicy(retries=5, backoff=1.0, jitter=0.5, max_delay=10.0, random=lambda: draw)

    assert [policy(0.0).delay(n, busy(None)) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert [policy(0.999).delay(n, busy(None)) for n in range(4)] == pytest.approx([1.4995, 2.999, 5.998, 10.0])  # capped
    assert policy(0.0).delay(0, busy("3")) == 3.0
    assert policy(0.5).delay(0, busy("3")) == 3.75
    assert policy(0.5).delay(0, busy("60")) == 10.0
    assert policy(0.5).delay(5, busy("0")) is None  # the attempts are spent
    assert policy(0.5).delay(0, httpx.Response(500)) is None
    assert policy(0.5).delay(0, httpx.ReadTimeout("slow")) is None
    assert policy(0.0).delay(1, httpx.ConnectError("refused")) == 2.0
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


def test_one_retry_loop_drives_both_clients(sleeps: list[float]) -> None:
    """The sync and async clients wait the same waits and raise the same error from the same answers."""

    def answers() -> httpx.MockTransport:
        return httpx.MockTransport(Script(httpx.ConnectError("refused"), busy(None), busy("1"), busy(None)))

    def sync() -> DigitsHTTPError:
        with Client(transport=answers(), retries=3, backoff=0.5, jitter=0) as c, pytest.raises(DigitsHTTPError) as caught:
            c.model_info()
        return caught.value

    async def asynchronous() -> DigitsHTTPError:
        async with AsyncClient(transport=answers(), retries=3, backoff=0.5, jitter=0) as c:
            with pytest.raises(DigitsHTTPError) as caught:
                await c.model_info()
        return caught.value

    sync_error = sync()
    sync_sleeps = list(sleeps)
    sleeps.clear()
    async_error = asyncio.run(asynchronous())
    assert sync_sleeps == sleeps == [0.5, 1.0, 1.0]
    assert str(sync_error) == str(async_error) == "503: the models are still warming up"


async def test_async_client_retries(sleeps: list[float]) -> None:
    script = Script(busy("0"), busy("1"), httpx.Response(200, json=OK_BODY))
    async with AsyncClient(transport=httpx.MockTransport(script), jitter=0) as c:
        response = await c.predict([one()])
    assert len(script.requests) == 3 and sleeps == [1.0]
    assert type(response) is PredictResponse


# Async client against the server -----------------------------------------------------


async def test_async_client(live_server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path / "one.png", one())
    expected = direct(live_server, one(), ring())["predictions"]
    async with AsyncClient(live_server.url) as c:
        assert await c.ready() and await c.healthy()
        info = await c.model_info()
        assert type(info) is ModelInfoResponse and {m.name for m in info.models} == MODELS
        response = await c.predict([path, ring()], model="inception", include_input=True)
        assert response.model == "inception" and all(p.input is not None for p in response.predictions)
        response = await c.predict([Image.open(path), ring() / 255.0])
        for prediction, reference in zip(response.predictions, expected, strict=True):
            assert_same(prediction, reference)
        blank = (await c.predict(np.zeros((28, 28), np.uint8))).predictions[0]
        assert blank.is_digit is False and blank.digit_score == 0.0


# CLI ---------------------------------------------------------------------------------


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five images in a directory, named so that sorting matters, plus files to skip."""
    directory = tmp_path / "scans"
    for name, image in [("b.png", ring()), ("a.PNG", bar()), ("d.png", one()), ("c.png", cross()), ("e.png", ring())]:
        write(directory / name, image)
    Image.fromarray(one()).save(directory / "f.jpg", quality=95)
    (directory / "notes.txt").write_text("not an image")
    (directory / "nested").mkdir()
    write(directory / "nested" / "z.png", one())
    return directory


def test_cli_predict_table(live_server: LiveServer, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single = write(tmp_path / "one.png", one())
    assert main(["predict", str(single), str(folder), "--url", live_server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["file", "digit", "confidence", "digit?"]
    names = [str(single), *(str(folder / n) for n in ["a.PNG", "b.png", "c.png", "d.png", "e.png", "f.jpg"])]
    assert [line.split()[0] for line in out[1:]] == names
    expected = direct(live_server, one(), bar(), ring(), cross(), one(), ring())["predictions"]
    for line, reference in zip(out[1:], expected, strict=False):  # f.jpg is lossy: checked for shape only
        _, digit, confidence, *judged = line.split()
        assert judged in (["yes"], ["no"])
        assert int(digit) == reference["label"]
        assert float(confidence.rstrip("%")) == pytest.approx(100 * max(reference["probabilities"]), abs=0.11)
    assert out[-1].split()[1].isdigit() and out[-1].split()[2].endswith("%")


def test_cli_predict_json_in_batches(live_server: LiveServer, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(folder), "--url", live_server.url, "--json", "--batch-size", "2", "--model", "resnet"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["model"] == "resnet"
    assert [Path(p["file"]).name for p in result["predictions"]] == ["a.PNG", "b.png", "c.png", "d.png", "e.png", "f.jpg"]
    expected = direct(live_server, bar(), ring(), cross(), one(), ring(), model="resnet")["predictions"]
    for got, reference in zip(result["predictions"], expected, strict=False):
        assert got["label"] == reference["label"]
        assert got["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-4)
        assert got["confidence"] == pytest.approx(max(got["probabilities"]))
    assert "Traceback" not in captured.err


def test_cli_bad_image_fails_with_the_server_message(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "one.png", one())
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a picture")
    assert main(["predict", str(bad), str(good), "--url", live_server.url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: 422: image 0 ('x.png') is not a supported image")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "missing.png"], "error: no such file or directory: missing.png"),
        (["predict", "{empty}"], "error: no images to predict"),
        (["predict", "{one}", "--model", "lenet"], "error: 404: unknown model 'lenet'"),
    ],
)
def test_cli_errors(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    one_path = write(tmp_path / "one.png", one())
    argv = [a.format(empty=tmp_path / "empty", one=one_path) for a in argv]
    assert main([*argv, "--url", live_server.url]) == 1
    assert message in capsys.readouterr().err


def test_cli_unreachable_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5"]) == 1
    assert "error: cannot reach" in capsys.readouterr().err
    assert main(["predict"]) == 2
    assert main(["predict", "x.png", "--batch-size", "0"]) == 2
    assert main(["--help"]) == 0
    assert "predict" in capsys.readouterr().out


def test_cli_info(live_server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(live_server.url) as c:
        info = c.model_info()
    assert main(["info", "--url", live_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "architecture", "parameters", "test", "accuracy", "device", "sha256"]
    table = {line.split()[0]: line for line in lines[1:-1]}
    assert set(table) == MODELS
    assert "*" in table[info.default_model]
    for model in info.models:
        row = table[model.name]
        assert f"{model.parameters:,}" in row and model.device in row
        assert f"{100 * model.metrics['test_accuracy']:.2f}%" in row
        assert model.architecture.split(":")[0] in row
        if model.weights.sha256:
            assert model.weights.sha256[:12] in row and model.weights.sha256[:13] not in row

    monkeypatch.setenv("DIGITS_URL", live_server.url)  # the default --url
    assert main(["info", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    said = httpx.get(live_server.url + "/model-info").json()
    assert printed.keys() == said.keys() and printed["models"][0].keys() == said["models"][0].keys()  # unknown fields kept too
    assert printed["models"][0]["weights"] == said["models"][0]["weights"]
    assert {m.name for m in ModelInfoResponse.model_validate(printed).models} == MODELS


def test_module_entry_point_and_no_torch(live_server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path / "one.png", one())
    run = subprocess.run(
        [sys.executable, "-m", "digits_client", "predict", str(path), "--url", live_server.url, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["predictions"]) == 1
    code = "import sys, digits_client, digits_client.cli; print(sorted({'torch', 'fastapi', 'service', 'numpy', 'PIL'} & set(sys.modules)))"
    light = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert light.returncode == 0, light.stderr
    assert light.stdout.strip() == "[]"  # the client stands alone: no torch, no server, and numpy/Pillow only when the caller has them


# The digit? column and JSON fields (offline: the server answers through MockTransport) ---


def answer_with(monkeypatch: pytest.MonkeyPatch, predictions: list[dict[str, Any]]) -> None:
    """Make the CLI's client talk to a fake server that answers every /predict with ``predictions``."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model": "ensemble", "predictions": predictions})

    client: Callable[..., Client] = functools.partial(Client, transport=httpx.MockTransport(handler))
    monkeypatch.setattr(digits_client.cli, "Client", client)


def prediction(label: int, **extra: object) -> dict[str, Any]:
    probabilities = [0.01] * 10
    probabilities[label] = 0.91
    return {"label": label, "confidence": 0.91, "probabilities": probabilities, **extra}


def test_cli_shows_whether_each_image_is_a_digit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(write(tmp_path / name, one())) for name in ("a.png", "b.png")]
    answer_with(monkeypatch, [prediction(1, is_digit=True, digit_score=0.97), prediction(4, is_digit=False, digit_score=0.08)])
    assert main(["predict", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["file", "digit", "confidence", "digit?"],
        [files[0], "1", "91.0%", "yes"],
        [files[1], "4", "91.0%", "no"],
    ]
    assert main(["predict", *files, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"]
    assert [(p["is_digit"], p["digit_score"]) for p in printed] == [(True, 0.97), (False, 0.08)]


def test_cli_without_digit_judgement_from_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path / "a.png", one()))
    answer_with(monkeypatch, [prediction(1)])
    assert main(["predict", path]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["file", "digit", "confidence"]
    assert main(["predict", path, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"][0]
    assert "is_digit" not in printed and "digit_score" not in printed
    with Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, json={"model": "m", "predictions": [prediction(2)]}))) as c:
        answer = c.predict(one()).predictions[0]
    assert answer.is_digit is None and answer.digit_score is None


def test_arrays_are_encoded_without_pillow() -> None:
    image = bar()
    encoded = gray_png(image.tobytes(), 28, 28)
    with Image.open(io.BytesIO(encoded)) as decoded:
        assert decoded.mode == "L" and decoded.size == (28, 28)
        assert np.array_equal(np.asarray(decoded), image)
    with pytest.raises(ValueError, match="bytes"):
        gray_png(b"\x00" * 5, 2, 2)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_only_on_a_terminal() -> None:
    terminal = Terminal()
    with digits_client.cli._progress(5, terminal, wanted=True) as advance:
        advance(2)
        advance(3)
    assert terminal.getvalue() == "\rpredicted 2/5 images (40%)\rpredicted 5/5 images (100%)\r\x1b[K"
    for stream, wanted in ((Terminal(), False), (io.StringIO(), True)):
        with digits_client.cli._progress(5, stream, wanted=wanted) as advance:
            advance(5)
        assert stream.getvalue() == ""
