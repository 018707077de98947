"""Open Inference Protocol (KServe V2) over the app in-process, plus API-key protection."""

import httpx
import numpy as np
import pytest

from tests.conftest import serving, stroke_digit_one

ONE = (stroke_digit_one() / 255).astype(np.float32)


def infer_body(data: object, shape: list[int], datatype: str = "FP32", **extra: object) -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}], **extra}


async def test_health_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2")).json()["name"] == "digits"
    meta = (await client.get("/v2/models/resnet")).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"probabilities": [-1, 10], "label": [-1], "is_digit": [-1]}
    assert (await client.get("/v2/models/ensemble/ready")).json() == {"name": "ensemble", "ready": True}


@pytest.mark.parametrize("model", ["inception", "resnet", "ensemble"])
async def test_infer_fp32_flat_and_uint8_nested_agree(client: httpx.AsyncClient, model: str) -> None:
    batch = np.stack([ONE, ONE[::-1]])
    fp32 = await client.post(f"/v2/models/{model}/infer", json=infer_body(batch.reshape(-1).tolist(), [2, 1, 28, 28], id="r1"))
    uint8 = await client.post(
        f"/v2/models/{model}/infer", json=infer_body((batch * 255).round().astype(int).tolist(), [2, 28, 28], "UINT8")
    )
    assert fp32.status_code == 200 and uint8.status_code == 200, (fp32.text, uint8.text)
    first, second = fp32.json(), uint8.json()
    assert first["model_name"] == model and first["id"] == "r1"
    outputs = {o["name"]: o for o in first["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10] and outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["label"] == {"name": "label", "shape": [2], "datatype": "INT64", "data": outputs["label"]["data"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(2, 10)
    assert list(probabilities.argmax(1)) == outputs["label"]["data"]
    assert outputs["is_digit"]["datatype"] == "BOOL" and all(isinstance(v, bool) for v in outputs["is_digit"]["data"])
    np.testing.assert_allclose(probabilities, np.array(second["outputs"][0]["data"]).reshape(2, 10), atol=1e-5)


async def test_requested_outputs_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/resnet/infer", json=infer_body(ONE.tolist(), [1, 28, 28], outputs=[{"name": "label"}]))
    assert [o["name"] for o in response.json()["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (infer_body([0.0] * 784, [1, 3, 28, 28]), 400, "has shape [1, 3, 28, 28]"),
        (infer_body([0.0] * 784, [784]), 400, "has shape [784]"),
        (infer_body([0] * 784, [1, 28, 28], "INT64"), 400, "datatype INT64"),
        (infer_body([0.0] * 783, [1, 28, 28]), 400, "needs 784 values, got 783"),
        (infer_body([2.0] * 784, [1, 28, 28]), 400, "intensities in [0, 1]"),
        (infer_body([300] * 784, [1, 28, 28], "UINT8"), 400, "integers in 0..255"),
        (infer_body(["a"] * 784, [1, 28, 28]), 400, "must be numbers"),
        (infer_body([0.0] * 784, [1, 28, 28], outputs=[{"name": "logits"}]), 400, "unknown output(s) logits"),
        ({"inputs": []}, 400, "exactly one input"),
        ({"inputs": "x"}, 400, "inputs"),
    ],
)
async def test_infer_errors_are_v2_style(client: httpx.AsyncClient, body: dict[str, object], status: int, message: str) -> None:
    response = await client.post("/v2/models/resnet/infer", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_infer_non_finite_values_are_refused(client: httpx.AsyncClient, literal: str) -> None:
    text = '{"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": [' + literal + ", 0" * 783 + "]}]}"
    response = await client.post("/v2/models/resnet/infer", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "NaN or infinity" in response.json()["error"]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/v2/models/vgg"),
        await client.post("/v2/models/vgg/infer", json=infer_body([0.0] * 784, [1, 28, 28])),
    ):
        assert response.status_code == 404 and "unknown model 'vgg'" in response.json()["error"]


async def test_api_key_guards_inference_but_not_health() -> None:
    async with serving(api_key="s3cret") as http:
        body = infer_body(ONE.tolist(), [1, 28, 28])
        missing = await http.post("/v2/models/resnet/infer", json=body)
        assert missing.status_code == 401 and "API key" in missing.json()["error"]
        wrong = await http.post("/predict", json={"images": ["AAAA"]}, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
        right = await http.post("/v2/models/resnet/infer", json=body, headers={"X-API-Key": "s3cret"})
        assert right.status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
            assert (await http.get(path)).status_code == 200
        assert (await http.get("/model-info")).json()["settings"]["api_key_required"] is True
