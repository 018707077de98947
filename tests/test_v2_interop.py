"""The /v2 endpoints work with an independent Open Inference Protocol client, tritonclient[http].

tritonclient is NVIDIA's client for Triton Inference Server, written against the protocol and
not against this service. Every answer it parses is compared with what plain HTTP gets from
/v2 and from the multipart /predict for the same images (a 28x28 white-on-black PNG passes
/predict's preprocessing unchanged, so all paths must give the same probabilities).

The server implements the binary tensor data extension, so tritonclient works with its
defaults (binary inputs, and binary outputs when none are named); JSON tensors work too.
"""

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from models.registry import SERVED_MODELS
from service import __version__
from tests.conftest import LiveServer, png_bytes, stroke_digit_one


def ring(size: int = 28) -> np.ndarray:
    """A hollow ellipse, zero-like, white on black."""
    y, x = np.mgrid[:size, :size]
    r = ((x - size / 2 + 0.5) / 6) ** 2 + ((y - size / 2 + 0.5) / 9) ** 2
    return ((r > 0.6) & (r < 1.0)).astype(np.uint8) * 255


def scribble(seed: int = 0, size: int = 28) -> np.ndarray:
    """Random grey strokes inside a black border, so that /predict keeps it as it is."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    image[4:24, 4:24] = rng.integers(0, 256, (20, 20)) * (rng.random((20, 20)) < 0.3)
    return image


def images() -> np.ndarray:
    """N x 28 x 28 uint8, white digit on black."""
    return np.stack([stroke_digit_one(), ring(), scribble()])


def as_fp32(batch: np.ndarray) -> np.ndarray:
    """N x 1 x 28 x 28 float32 intensities in [0, 1], as V2 FP32 input."""
    return (batch.astype(np.float32) / np.float32(255.0))[:, None]


def json_input(array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor


def json_outputs(*names: str) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=False) for name in names]


def plain_v2(server: LiveServer, model: str, array: np.ndarray, datatype: str) -> dict[str, np.ndarray]:
    """The same inference as plain JSON over HTTP, nested row-major data."""
    body = {"inputs": [{"name": "input", "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in response.json()["outputs"]}


def plain_predict(server: LiveServer, model: str, batch: np.ndarray) -> np.ndarray:
    """The same images as PNG files through multipart /predict."""
    files = [("files", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(batch)]
    response = httpx.post(f"{server.url}/predict", params={"model": model}, files=files, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray([p["probabilities"] for p in response.json()["predictions"]])


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=live_server.url.removeprefix("http://"), connection_timeout=10, network_timeout=60)
    yield client
    client.close()


def status(error: InferenceServerException) -> str:
    return str(error.status())


# ---------------------------------------------------------------------------------------------
# health and metadata


def test_server_and_models_are_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in SERVED_MODELS:
        assert client.is_model_ready(model), model
    assert client.is_model_ready("ensemble")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata == {"name": "digits", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("resnet")
    assert metadata["name"] == "resnet"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]),
        "label": ("INT64", [-1]),
        "is_digit": ("BOOL", [-1]),
    }


def test_unknown_model_is_a_404_the_client_reports(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert status(caught.value) == "404"
    assert "unknown model" in caught.value.message()  # read from the protocol's {"error": ...}
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", [json_input(as_fp32(images()), "FP32")])
    assert status(caught.value) == "404"


# ---------------------------------------------------------------------------------------------
# inference


def test_infer_needs_no_content_type_header(client: triton.InferenceServerClient) -> None:
    """tritonclient (like other V2 clients) sends the JSON body without a Content-Type header.

    The V2 REST spec does not require one, Triton and KServe accept such a request, and
    FastAPI >= 0.132 refuses to parse it as JSON unless the route has strict_content_type=False.
    """
    result = client.infer("ensemble", [json_input(as_fp32(images()), "FP32")], outputs=json_outputs("label"))
    assert result.as_numpy("label").shape == (3,)


async def test_async_client_infer(live_server: LiveServer) -> None:
    """tritonclient.http.aio (aiohttp) sends its JSON body as Content-Type: application/octet-stream.

    Triton ignores the Content-Type of an inference request; FastAPI parses a body as JSON only
    when it says JSON (or, with strict_content_type=False, says nothing).
    """
    batch = images()
    client = triton_aio.InferenceServerClient(url=live_server.url.removeprefix("http://"), conn_timeout=60)
    try:
        assert await client.is_server_live()
        assert await client.is_model_ready("ensemble")
        result = await client.infer("ensemble", [json_input(as_fp32(batch), "FP32")], outputs=json_outputs("probabilities"))
    finally:
        await client.close()
    plain = plain_v2(live_server, "ensemble", as_fp32(batch), "FP32")
    np.testing.assert_allclose(result.as_numpy("probabilities"), plain["probabilities"], atol=1e-6)


@pytest.mark.parametrize("model", SERVED_MODELS)
def test_fp32_infer_matches_plain_v2_and_predict(client: triton.InferenceServerClient, live_server: LiveServer, model: str) -> None:
    batch = images()
    result = client.infer(
        model, [json_input(as_fp32(batch), "FP32")], outputs=json_outputs("probabilities", "label"), request_id="interop-1"
    )
    response = result.get_response()
    assert response["model_name"] == model
    assert response["id"] == "interop-1"
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.shape == (len(batch), 10) and probabilities.dtype == np.float32
    assert labels.shape == (len(batch),) and labels.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))

    plain = plain_v2(live_server, model, as_fp32(batch), "FP32")
    np.testing.assert_allclose(probabilities, plain["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(labels, plain["label"])

    np.testing.assert_allclose(probabilities, plain_predict(live_server, model, batch), atol=1e-5)


def test_uint8_infer_matches_fp32(client: triton.InferenceServerClient, live_server: LiveServer) -> None:
    batch = images()
    outputs = json_outputs("probabilities", "label")
    as_uint8 = client.infer("ensemble", [json_input(batch[:, None], "UINT8")], outputs=outputs)
    as_float = client.infer("ensemble", [json_input(as_fp32(batch), "FP32")], outputs=outputs)
    np.testing.assert_allclose(as_uint8.as_numpy("probabilities"), as_float.as_numpy("probabilities"), atol=1e-6)
    np.testing.assert_array_equal(as_uint8.as_numpy("label"), as_float.as_numpy("label"))
    # [N, 28, 28] is accepted as well
    flat = client.infer("ensemble", [json_input(batch, "UINT8")], outputs=outputs)
    np.testing.assert_allclose(flat.as_numpy("probabilities"), as_uint8.as_numpy("probabilities"), atol=1e-6)
    np.testing.assert_allclose(as_uint8.as_numpy("probabilities"), plain_predict(live_server, "ensemble", batch), atol=1e-5)


def test_requested_outputs_only(client: triton.InferenceServerClient) -> None:
    result = client.infer("ensemble", [json_input(as_fp32(images()), "FP32")], outputs=json_outputs("label"))
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def binary_input(array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)  # tritonclient's default: binary tensor data
    return tensor


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_tritonclient_with_its_defaults_sends_and_receives_binary_tensors(client: triton.InferenceServerClient, datatype: str) -> None:
    batch = as_fp32(images()) if datatype == "FP32" else images()
    reference = client.infer("ensemble", [json_input(batch, datatype)], outputs=json_outputs("probabilities", "label"))
    result = client.infer("ensemble", [binary_input(batch, datatype)])  # no outputs named: all come back binary
    outputs = result.get_response()["outputs"]
    assert {o["name"]: o["parameters"]["binary_data_size"] for o in outputs} == {"probabilities": 3 * 10 * 4, "label": 3 * 8, "is_digit": 3}
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference.as_numpy("probabilities"), atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), reference.as_numpy("label"))
    assert result.as_numpy("label").dtype == np.int64
    assert result.as_numpy("is_digit").dtype == np.bool_ and result.as_numpy("is_digit").shape == (3,)


def test_binary_and_json_outputs_mix_as_requested(client: triton.InferenceServerClient) -> None:
    outputs = [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("resnet", [binary_input(as_fp32(images()), "FP32")], outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in by_name["probabilities"] and by_name["label"]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(result.as_numpy("label"), result.as_numpy("probabilities").argmax(axis=1))


def test_binary_input_of_the_wrong_size_is_a_400(live_server: LiveServer) -> None:
    header = b'{"inputs":[{"name":"input","shape":[1,28,28],"datatype":"UINT8","parameters":{"binary_data_size":700}}]}'
    response = httpx.post(
        f"{live_server.url}/v2/models/resnet/infer",
        content=header + bytes(700),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 400
    assert "needs 784 values, got 700" in response.json()["error"]


def test_invalid_input_is_a_400_with_the_servers_message(client: triton.InferenceServerClient) -> None:
    wrong = np.zeros((1, 1, 27, 27), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("ensemble", [json_input(wrong, "FP32")])
    assert status(caught.value) == "400"
    assert "expected [N, 1, 28, 28]" in caught.value.message()


def test_versioned_endpoints(client: triton.InferenceServerClient) -> None:
    """The model metadata lists version "1"; the protocol's /versions/{v} paths must then serve it.

    V2 REST: GET v2/models/{name}[/versions/{v}], .../ready and POST .../infer. tritonclient
    uses those paths whenever a model_version is given.
    """
    assert client.get_model_metadata("resnet", model_version="1")["name"] == "resnet"
    assert client.is_model_ready("resnet", model_version="1")
    result = client.infer("resnet", [json_input(as_fp32(images()), "FP32")], model_version="1", outputs=json_outputs("label"))
    assert result.as_numpy("label").shape == (3,)
