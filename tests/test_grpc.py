"""The Open Inference Protocol over gRPC against the real server, with independent clients.

tritonclient.grpc (NVIDIA's client for Triton, written against the protocol, not against this
service) with its default settings sends ``raw_input_contents``; typed ``contents`` are sent
through a plain grpc stub built from tritonclient's own generated protobuf code. Answers are
compared with what /predict and V2 REST give for the same images and requests.

This process never imports the server's generated protobuf module: it defines the same
``inference`` messages as tritonclient's, and protobuf's default pool holds only one of them.
"""

import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.data import Digits
from models.registry import SERVED_MODELS
from service import __version__
from tests.conftest import LiveServer, free_port, png_bytes, start_server, stop_server, wait_until_ready

API_KEY_MESSAGE = "missing or wrong API key: send it in the X-API-Key header"


@dataclass
class GrpcServer:
    live: LiveServer
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_grpc_server(tmp_path: Path, wait_ready: bool = True, **env: str) -> GrpcServer:
    port = free_port()
    return GrpcServer(start_server(tmp_path, wait_ready=wait_ready, DIGITS_GRPC_PORT=str(port), DIGITS_WARMUP_BATCHES="1", **env), port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    started = start_grpc_server(tmp_path_factory.mktemp("grpc"))
    yield started
    stop_server(started.live)


@pytest.fixture(scope="module")
def client(server: GrpcServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.address)
    yield client
    client.close()


@pytest.fixture
def stub(server: GrpcServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def digits(mnist_test: Digits) -> tuple[np.ndarray, np.ndarray]:
    """The first 64 MNIST test digits (N x 28 x 28 uint8, white on black) and their labels."""
    return mnist_test.images[:64].numpy(), mnist_test.labels[:64].numpy()


def raw_input(array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)  # tritonclient.grpc sends raw_input_contents
    return tensor


def as_fp32(batch: np.ndarray) -> np.ndarray:
    return (batch.astype(np.float32) / np.float32(255.0))[:, None]


def predict(server: GrpcServer, model: str, batch: np.ndarray) -> list[dict[str, Any]]:
    """The same images as PNG files through multipart /predict."""
    files = [("files", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(batch)]
    response = httpx.post(f"{server.live.url}/predict", params={"model": model}, files=files, timeout=60)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def rest_error(server: GrpcServer, model: str, tensor: dict[str, object]) -> str:
    """What V2 REST answers for the same input tensor as JSON (NaN as the literal): its 4xx message."""
    body = json.dumps({"inputs": [tensor]})
    url = f"{server.live.url}/v2/models/{model}/infer"
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    return str(response.json()["error"])


def failure(call: Callable[..., object], *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------
# health and metadata


def test_health_readiness_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in SERVED_MODELS:
        assert client.is_model_ready(model), model
        assert client.is_model_ready(model, model_version="1"), model
    assert client.get_server_metadata(as_json=True) == {"name": "digits", "version": __version__}  # no extensions over gRPC
    metadata = client.get_model_metadata("resnet", as_json=True)
    assert metadata["name"] == "resnet" and metadata["versions"] == ["1"] and metadata["platform"] == "pytorch"
    # as_json renders int64 as strings, as protobuf's JSON mapping does
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", ["-1", "10"]),
        "label": ("INT64", ["-1"]),
        "is_digit": ("BOOL", ["-1"]),
    }


def test_an_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient, server: GrpcServer) -> None:
    rest = httpx.get(f"{server.live.url}/v2/models/vgg", timeout=30).json()["error"]
    for error in (
        failure(client.get_model_metadata, "vgg"),
        failure(client.is_model_ready, "vgg"),
        failure(client.infer, "vgg", [raw_input(np.zeros((1, 28, 28), np.uint8), "UINT8")]),
    ):
        assert error.status() == "StatusCode.NOT_FOUND"
        assert error.message() == rest == "unknown model 'vgg'; available: inception, resnet, ensemble"
    error = failure(client.get_model_metadata, "resnet", model_version="2")
    assert error.status() == "StatusCode.NOT_FOUND" and "has no version '2'" in error.message()


# ---------------------------------------------------------------------------------------------
# inference


@pytest.mark.parametrize("model", SERVED_MODELS)
def test_mnist_digits_get_the_labels_predict_gives(
    client: triton.InferenceServerClient, server: GrpcServer, digits: tuple[np.ndarray, np.ndarray], model: str
) -> None:
    images, truth = digits
    expected = predict(server, model, images)
    for array, datatype in ((as_fp32(images), "FP32"), (images, "UINT8"), (images[:, None], "UINT8")):
        result = client.infer(model, [raw_input(array, datatype)], request_id="digits-1")
        response = result.get_response(as_json=True)
        assert response["model_name"] == model and response["model_version"] == "1" and response["id"] == "digits-1"
        labels, probabilities, is_digit = (result.as_numpy(name) for name in ("label", "probabilities", "is_digit"))
        assert labels.dtype == np.int64 and probabilities.dtype == np.float32 and is_digit.dtype == np.bool_
        assert labels.tolist() == [p["label"] for p in expected]
        np.testing.assert_allclose(probabilities, [p["probabilities"] for p in expected], atol=1e-5)
        assert is_digit.tolist() == [p["is_digit"] for p in expected]
        assert (labels == truth).sum() >= 62, f"{model} reads {(labels == truth).sum()} of 64 MNIST test digits"


def test_requested_outputs_only_in_the_order_asked(client: triton.InferenceServerClient, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits[0][:3]
    outputs = [triton.InferRequestedOutput("is_digit"), triton.InferRequestedOutput("label")]
    result = client.infer("ensemble", [raw_input(images, "UINT8")], outputs=outputs)
    assert [o["name"] for o in result.get_response(as_json=True)["outputs"]] == ["is_digit", "label"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (3,)


def test_typed_contents_in_and_out(
    client: triton.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """contents.fp32_contents / uint_contents in, typed contents out (no raw_output_contents)."""
    images = digits[0][:8]
    reference = client.infer("inception", [raw_input(images, "UINT8")])
    for datatype, field, values in (
        ("FP32", "fp32_contents", as_fp32(images).reshape(-1).tolist()),
        ("UINT8", "uint_contents", images.reshape(-1).tolist()),
    ):
        request = service_pb2.ModelInferRequest(model_name="inception", id="typed")
        tensor = request.inputs.add(name="input", datatype=datatype, shape=[8, 1, 28, 28])
        getattr(tensor.contents, field).extend(values)
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "typed" and not response.raw_output_contents
        outputs = {output.name: output for output in response.outputs}
        assert list(outputs) == ["probabilities", "label", "is_digit"]
        assert list(outputs["probabilities"].shape) == [8, 10] and outputs["probabilities"].datatype == "FP32"
        probabilities = np.asarray(outputs["probabilities"].contents.fp32_contents).reshape(8, 10)
        np.testing.assert_allclose(probabilities, reference.as_numpy("probabilities"), atol=1e-5)
        assert list(outputs["label"].contents.int64_contents) == reference.as_numpy("label").tolist()
        assert list(outputs["is_digit"].contents.bool_contents) == reference.as_numpy("is_digit").tolist()


def test_a_bad_shape_is_invalid_argument_with_the_rest_message(client: triton.InferenceServerClient, server: GrpcServer) -> None:
    wrong = np.zeros((1, 1, 27, 27), np.float32)
    error = failure(client.infer, "ensemble", [raw_input(wrong, "FP32")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    rest = rest_error(server, "ensemble", {"name": "input", "shape": [1, 1, 27, 27], "datatype": "FP32", "data": [0.0] * 729})
    assert error.message() == rest
    assert "has shape [1, 1, 27, 27]; expected [N, 1, 28, 28]" in rest


@pytest.mark.parametrize(
    ("datatype", "shape", "values", "message"),
    [
        ("UINT8", [1, 28, 28], [0] * 700, "needs 784 values, got 700"),
        ("INT64", [1, 28, 28], [0] * 784, "datatype INT64"),
        ("FP32", [1, 28, 28], [2.0] * 784, "intensities in [0, 1]"),
        ("UINT8", [1, 28, 28], [300] * 784, "integers in 0..255"),
        ("FP32", [1, 28, 28], [float("nan")] + [0.0] * 783, "NaN or infinity"),
    ],
)
def test_invalid_tensors_get_the_rest_messages(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: GrpcServer, datatype: str, shape: list[int], values: list[float], message: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="resnet")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    if datatype == "FP32":
        tensor.contents.fp32_contents.extend(values)
    else:
        tensor.contents.uint_contents.extend([int(v) for v in values])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(caught.value.details())
    assert caught.value.details() == rest_error(server, "resnet", {"name": "input", "shape": shape, "datatype": datatype, "data": values})


def test_raw_bytes_that_do_not_fit_the_shape_are_invalid_argument(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="resnet", raw_input_contents=[bytes(700 * 4)])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 28, 28])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'input': shape [1, 28, 28] needs 784 values, got 700"
    request.raw_input_contents[0] = bytes(3)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.details() == "input 'input': 3 bytes is not a whole number of FP32 values"
    request.raw_input_contents[0] = bytes(784 * 4)
    request.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'input' has both contents and raw_input_contents; send one"
    del request.raw_input_contents[:]
    request.inputs[0].ClearField("contents")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.details() == "input 'input' has neither contents nor raw_input_contents"


# ---------------------------------------------------------------------------------------------
# API key and backpressure


def test_api_key_and_overload(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The key guards inference only; a request above the queue is UNAVAILABLE with retry-after, as REST's 503."""
    guarded = start_grpc_server(tmp_path, DIGITS_API_KEY="s3cret", DIGITS_MAX_QUEUE_IMAGES="16")
    client = triton.InferenceServerClient(guarded.address)
    try:
        one = [raw_input(digits[0][:1], "UINT8")]
        for headers in (None, {"x-api-key": "guess"}):
            error = failure(client.infer, "resnet", one, headers=headers)
            assert error.status() == "StatusCode.UNAUTHENTICATED" and error.message() == API_KEY_MESSAGE
        rest = httpx.post(f"{guarded.live.url}/v2/models/resnet/infer", json={"inputs": []}, timeout=30)
        assert rest.status_code == 401 and rest.json()["error"] == API_KEY_MESSAGE
        assert client.is_server_ready() and client.is_model_ready("resnet")
        assert client.get_model_metadata("resnet").name == "resnet"
        result = client.infer("resnet", one, headers={"x-api-key": "s3cret"})
        assert result.as_numpy("label").tolist() == digits[1][:1].tolist()

        seventeen = [raw_input(digits[0][:17], "UINT8")]
        error = failure(client.infer, "resnet", seventeen, headers={"x-api-key": "s3cret"})
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "17 more would exceed the queue limit of 16" in str(error.message())
        with grpc.insecure_channel(guarded.address) as channel:
            request = service_pb2.ModelInferRequest(model_name="resnet", raw_input_contents=[digits[0][:17].tobytes()])
            request.inputs.add(name="input", datatype="UINT8", shape=[17, 28, 28])
            with pytest.raises(grpc.RpcError) as caught:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=[("x-api-key", "s3cret")], timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert {(m.key, m.value) for m in caught.value.trailing_metadata() or ()} >= {("retry-after", "1")}
    finally:
        client.close()
        stop_server(guarded.live)


# ---------------------------------------------------------------------------------------------
# several workers, and the stop signal


def grpc_listeners(server: GrpcServer) -> set[int]:
    """The processes of the server's tree listening on its gRPC port."""
    tree = [psutil.Process(server.live.process.pid), *psutil.Process(server.live.process.pid).children(recursive=True)]
    listening = set()
    for process in tree:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.port for c in process.net_connections("tcp")):
                listening.add(process.pid)
        except psutil.NoSuchProcess:
            continue
    return listening


@pytest.mark.timeout(180)
def test_workers_share_the_port_and_drain_on_sigterm(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    workers = start_grpc_server(tmp_path, wait_ready=False, DIGITS_WORKERS="2")
    try:
        wait_until_ready(workers.live)
        while len(grpc_listeners(workers)) < 2:  # each worker binds once its app has started
            assert workers.live.process.poll() is None, workers.live.log()
            time.sleep(0.1)
        assert workers.live.process.pid not in grpc_listeners(workers)  # the workers, not the supervisor

        images, truth = digits
        expected = [p["label"] for p in predict(workers, "ensemble", images)]
        for _ in range(6):  # a fresh connection each: the kernel spreads them over the workers
            client = triton.InferenceServerClient(workers.address)
            try:
                assert client.infer("ensemble", [raw_input(images, "UINT8")]).as_numpy("label").tolist() == expected
            finally:
                client.close()
        assert (np.asarray(expected) == truth).sum() >= 62

        # One client keeps asking while SIGTERM arrives: answered until draining begins, refused after.
        answers: list[tuple[str, str]] = []
        stop = threading.Event()

        def keep_asking() -> None:
            client = triton.InferenceServerClient(workers.address)
            try:
                while not stop.is_set() and len(answers) < 10_000:
                    try:
                        labels = client.infer("resnet", [raw_input(images[:4], "UINT8")], client_timeout=30).as_numpy("label")
                        answers.append(("OK", "") if labels.tolist() == truth[:4].tolist() else ("wrong", str(labels)))
                    except InferenceServerException as exc:
                        answers.append((str(exc.status()).removeprefix("StatusCode."), str(exc.message())))
            finally:
                client.close()

        asking = threading.Thread(target=keep_asking)
        asking.start()
        while len(answers) < 5:
            assert asking.is_alive()
            time.sleep(0.05)
        workers.live.process.terminate()
        workers.live.process.wait(timeout=60)
        stop.set()
        asking.join(timeout=60)
        assert not asking.is_alive()
    finally:
        stop_server(workers.live)
    print(f"answers around SIGTERM: {Counter(status for status, _ in answers)}")
    assert workers.live.process.returncode == -15, workers.live.log()  # drained and re-raised SIGTERM, not killed
    assert "Traceback" not in workers.live.log()
    answered = [status for status, _ in answers].index("UNAVAILABLE")
    assert answered >= 5 and all(status == "OK" for status, _ in answers[:answered])
    # Draining refuses calls before the server stops; once it stops, the port refuses them (UNAVAILABLE too),
    # and a call that reaches it in the instant it stops is CANCELLED before any handler sees it.
    assert answers[answered] == ("UNAVAILABLE", "the service is shutting down")
    assert {status for status, _ in answers[answered:]} <= {"UNAVAILABLE", "CANCELLED"}, Counter(answers[answered:])


def test_a_taken_port_stops_the_server_with_a_message(tmp_path: Path) -> None:
    """A port held without SO_REUSEPORT cannot be shared: the server says so and exits 1, as for its HTTP port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = start_server(tmp_path, wait_ready=False, DIGITS_GRPC_PORT=str(port), DIGITS_WARMUP_BATCHES="1")
        try:
            taken.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server kept running without its gRPC port:\n{taken.log()}")
        finally:
            stop_server(taken)
    assert taken.process.returncode == 1, taken.log()
    assert f"gRPC cannot serve on 127.0.0.1:{port}" in taken.log()
