"""The app in-process (httpx.ASGITransport, lifespan run): routes, schemas and error paths."""

import asyncio
import base64
import gc
import json
import logging
import time

import httpx
import numpy as np
import pytest
from starlette.types import Message

from models.data import Digits
from models.nondigits import EVALUATION_SEED, render_nondigit
from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS, encode_image, png_bytes, serving, stroke_digit_one

ONE = png_bytes(stroke_digit_one())


def as_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "alive", "detail": None}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


@pytest.mark.parametrize("model", ["inception", "resnet", "ensemble"])
async def test_predict_multipart_every_model(client: httpx.AsyncClient, model: str) -> None:
    response = await client.post(f"/predict?model={model}", files=[("files", ("one.png", ONE, "image/png"))])
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == model
    (prediction,) = body["predictions"]
    assert len(prediction["probabilities"]) == 10
    assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert prediction["confidence"] == max(prediction["probabilities"])
    assert prediction["label"] == int(np.argmax(prediction["probabilities"]))
    assert prediction["input"] is None


async def test_predict_json_uses_the_default_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"images": [as_b64(ONE), as_b64(ONE)]})
    assert response.status_code == 200
    assert response.json()["model"] == "ensemble" and len(response.json()["predictions"]) == 2


async def test_include_input_returns_what_the_model_saw(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict?include_input=true", json={"images": [as_b64(ONE)]})
    seen = np.array(response.json()["predictions"][0]["input"])
    np.testing.assert_allclose(seen, stroke_digit_one() / 255, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"images": []}}, 422, "at least 1 item"),
        ({"json": {"images": ["@@@"]}}, 422, "image 0 is not valid base64"),
        ({"json": {"pictures": []}}, 422, "invalid JSON body"),
        ({"json": [1, 2]}, 422, "invalid JSON body"),
        ({"json": {"images": [1]}}, 422, "invalid JSON body at images.0"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid JSON body"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported media type 'text/plain'"),
        ({"files": [("files", ("empty.png", b"", "image/png"))]}, 422, "image 0 ('empty.png') is empty"),
        ({"files": [("file", ("a.png", ONE, "image/png"))]}, 422, "no parts named 'files'; it has 'file'"),
        ({"files": [("files", ("a.png", ONE, "image/png")), ("files", ("b.txt", b"text", "text/plain"))]}, 422, "image 1 ('b.txt')"),
        ({"data": {"files": "not a file"}, "files": [("other", ("a.png", ONE))]}, 422, "is a text field"),
    ],
)
async def test_bad_input_is_a_clear_4xx(client: httpx.AsyncClient, kwargs: dict[str, object], status: int, message: str) -> None:
    response = await client.post("/predict", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


async def test_a_blank_image_is_answered_in_its_place(client: httpx.AsyncClient) -> None:
    """An image that decodes is an answer: the blank one is not a digit, the others are untouched."""
    blank = png_bytes(np.zeros((28, 28), np.uint8))
    paper = png_bytes(np.full((60, 40), 255, np.uint8))
    digits = [("files", (f"{i}.png", ONE, "image/png")) for i in range(198)]
    files = [*digits[:100], ("files", ("blank.png", blank, "image/png")), *digits[100:], ("files", ("paper.png", paper, "image/png"))]
    alone = (await client.post("/predict", files=digits[:1])).json()["predictions"][0]
    response = await client.post("/predict?include_input=true", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 200
    for index in (100, 199):
        assert predictions[index]["is_digit"] is False and predictions[index]["digit_score"] == 0.0
        assert predictions[index]["input"] == [[0.0] * 28] * 28
        assert len(predictions[index]["probabilities"]) == 10
    for prediction in predictions[:100] + predictions[101:199]:
        assert prediction["label"] == alone["label"] and prediction["is_digit"] is True
        assert prediction["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict?model=vgg16", json={"images": [as_b64(ONE)]})
    assert response.status_code == 404 and "unknown model 'vgg16'" in response.json()["detail"]


async def test_too_many_images_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"images": [as_b64(ONE)] * 513})
    assert response.status_code == 413 and "513 images, above the limit of 512" in response.json()["detail"]


async def test_model_info(client: httpx.AsyncClient) -> None:
    info = (await client.get("/model-info")).json()
    assert info["default_model"] == "ensemble"
    by_name = {m["name"]: m for m in info["models"]}
    assert set(by_name) == {"inception", "resnet", "ensemble"}
    assert by_name["inception"]["parameters"] == 97_298 and by_name["resnet"]["parameters"] == 41_514
    for model in by_name.values():
        assert model["input_shape"] == [1, 28, 28] and model["classes"] == list(range(10))
        assert model["device"] == "cpu" and 0 < model["metrics"]["test_accuracy"] <= 1
    assert len(by_name["resnet"]["weights"]["sha256"]) == 64
    assert by_name["ensemble"]["weights"]["members"]["resnet"] == by_name["resnet"]["weights"]["sha256"]
    assert info["batching"]["max_batch_size"] == 128
    assert "api_key" not in info["settings"]


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.post("/predict?model=resnet", json={"images": [as_b64(ONE)]})
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'digits_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'digits_images_predicted_total{model="resnet"} 1.0' in text
    assert 'digits_batch_size_images_count{model="resnet"} 1.0' in text


async def test_access_log_and_latency_metric_time_the_request(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    started = time.perf_counter()
    await client.get("/healthz", headers={"X-Request-ID": "timed"})
    elapsed_ms = 1000 * (time.perf_counter() - started)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"]
    assert line["request_id"] == "timed" and line["status"] == 200
    assert 0 <= line["latency_ms"] <= elapsed_ms
    text = (await client.get("/metrics")).text
    total = float(text.split('digits_http_request_duration_seconds_sum{method="GET",route="/healthz"} ')[1].split()[0])
    assert 0 <= total <= elapsed_ms / 1000


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz", headers={"X-Request-ID": "abc-123"})).headers["x-request-id"] == "abc-123"
    assert len((await client.get("/healthz")).headers["x-request-id"]) == 32


async def test_openapi_documents_both_request_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "PredictResponse" in spec["components"]["schemas"]


async def test_startup_freezes_long_lived_objects_out_of_the_cyclic_gc() -> None:
    """Unfrozen, a full collection rescans the models and framework: ~120 ms stalls under load."""
    gc.unfreeze()
    async with serving() as http:
        assert gc.get_freeze_count() > 100_000
        assert (await http.get("/readyz")).status_code == 200


async def test_every_prediction_says_whether_it_looks_like_a_digit(client: httpx.AsyncClient, mnist_test: Digits) -> None:
    """Real MNIST test digits are digits; synthetic non-digits (the evaluation seed, never fitted on) are not."""
    rng = np.random.default_rng(EVALUATION_SEED)
    non_digits = [encode_image(render_nondigit(rng)) for _ in range(60)]
    digits = [png_bytes(image) for image in mnist_test.images[:200].numpy()]
    answers = {}
    for name, images in (("digits", digits), ("non_digits", non_digits)):
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        response = await client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        answers[name] = response.json()["predictions"]
    for prediction in answers["digits"] + answers["non_digits"]:
        assert 0 <= prediction["digit_score"] <= 1
    info = {m["name"]: m for m in (await client.get("/model-info")).json()["models"]}["ensemble"]
    threshold = info["is_digit"]["threshold"]
    for prediction in answers["digits"] + answers["non_digits"]:
        assert prediction["is_digit"] == (prediction["digit_score"] >= threshold)
    assert sum(p["is_digit"] for p in answers["digits"]) >= 0.98 * len(digits)
    assert sum(not p["is_digit"] for p in answers["non_digits"]) >= 0.85 * len(non_digits)


async def test_requests_leave_no_reference_cycle_for_the_collector() -> None:
    """The app collects its youngest generation every 50,000 allocations, so whatever a request left
    in a cycle would wait that long; a multipart body, aborted uploads' included, once did."""
    from bench.load import build_bodies, v2_infer_body
    from bench.stages import asgi_call, http_scope

    app = create_app(Settings(weights_dir=WEIGHTS, warmup_batches=1))
    requests = [("POST", "/predict", b"model=resnet", *build_bodies([ONE], kind, 1)[0]) for kind in ("multipart", "json")]
    requests.append(("POST", "/v2/models/resnet/infer", b"", *v2_infer_body([ONE])))

    async def aborted_upload() -> None:
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n' + bytes(200_000)
        scope = http_scope("POST", "/predict", b"model=resnet", content_type="multipart/form-data; boundary=b")
        scope["headers"] = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"1000000")]
        messages: list[Message] = [{"type": "http.disconnect"}, {"type": "http.request", "body": head, "more_body": True}]

        async def receive() -> Message:
            return messages.pop()

        async def send(message: Message) -> None:
            pass

        await app(scope, receive, send)

    async with app.router.lifespan_context(app):
        assert gc.get_threshold()[0] == 50_000
        while not app.state.handler.backend.status().ready:
            await asyncio.sleep(0.05)
        for request in requests:
            assert await asgi_call(app, *request) == 200
        await aborted_upload()
        gc.collect()
        gc.disable()
        try:
            for request in requests:
                for _ in range(3):
                    await asgi_call(app, *request)
            await aborted_upload()
            left = gc.collect()
        finally:
            gc.enable()
    assert left == 0
