"""The real server (``python -m service``) as a subprocess, over TCP on loopback."""

import asyncio
import base64
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from models.checkpoint import load_classifier, load_ensemble
from models.data import Digits, normalise
from models.registry import ARCHITECTURES
from service.__main__ import parse_settings
from tests.conftest import ROOT, WEIGHTS, LiveServer, png_bytes, start_server, stop_server


def direct_probabilities(digits: Digits) -> dict[str, torch.Tensor]:
    members = {name: load_classifier(WEIGHTS, name) for name in ARCHITECTURES}
    ensemble, _ = load_ensemble(WEIGHTS, {n: m for n, (m, _) in members.items()}, {n: meta["sha256"] for n, (_, meta) in members.items()})
    with torch.inference_mode():
        x = normalise(digits.images)
        return {"ensemble": ensemble(x), **{name: model(x) for name, (model, _) in members.items()}}


def multipart(digits: Digits) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"digit-{i}.png", png_bytes(image.numpy()), "image/png")) for i, image in enumerate(digits.images)]


def test_readiness_turns_true_only_after_warm_up(tmp_path: Path) -> None:
    server = start_server(tmp_path, wait_ready=False, DIGITS_WARMUP_BATCHES="15")
    try:
        statuses: list[tuple[int, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(server.url + "/readyz", timeout=2).status_code
                alive = httpx.get(server.url + "/healthz", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            statuses.append((alive, ready))
            if ready == 200:
                break
            predict = httpx.post(server.url + "/predict", json={"images": ["AAAA"]}, timeout=2)
            if predict.status_code != 503:  # warm-up finished in between
                assert httpx.get(server.url + "/readyz").status_code == 200
            else:
                assert predict.headers["Retry-After"] == "1" and "warming up" in predict.json()["detail"]
        assert statuses[0] == (200, 503), statuses[:3]  # alive, but not ready while warming up
        assert statuses[-1] == (200, 200)
        assert all(alive == 200 for alive, _ in statuses)
    finally:
        stop_server(server)


@pytest.mark.parametrize("model", ["inception", "resnet", "ensemble"])
def test_batches_keep_input_order(live_server: LiveServer, mnist_test: Digits, model: str) -> None:
    digits = mnist_test.subset(torch.arange(40))
    expected = direct_probabilities(digits)[model].argmax(1).tolist()
    by_multipart = httpx.post(f"{live_server.url}/predict?model={model}", files=multipart(digits), timeout=30)
    images = [base64.b64encode(png_bytes(image.numpy())).decode() for image in digits.images]
    by_json = httpx.post(f"{live_server.url}/predict?model={model}", json={"images": images}, timeout=30)
    for response in (by_multipart, by_json):
        assert response.status_code == 200, response.text
        assert [p["label"] for p in response.json()["predictions"]] == expected


def test_mnist_test_set_as_png_matches_direct_evaluation(live_server: LiveServer, mnist_test: Digits) -> None:
    """Every one of the 10,000 test images, sent as PNG, gets the label direct evaluation gives."""
    direct = direct_probabilities(mnist_test)["ensemble"]
    served = []
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        for start in range(0, len(mnist_test), 500):
            chunk = mnist_test.subset(torch.arange(start, min(start + 500, len(mnist_test))))
            response = http.post("/predict?model=ensemble", files=multipart(chunk))
            assert response.status_code == 200, response.text
            served.extend(response.json()["predictions"])
    served_labels = torch.tensor([p["label"] for p in served])
    served_probs = torch.tensor([p["probabilities"] for p in served])
    direct_accuracy = float((direct.argmax(1) == mnist_test.labels).double().mean())
    served_accuracy = float((served_labels == mnist_test.labels).double().mean())
    assert abs(served_accuracy - direct_accuracy) <= 0.0005
    assert torch.equal(served_labels, direct.argmax(1))  # the same input reaches the model
    assert torch.allclose(served_probs, direct, atol=1e-4)


async def test_concurrent_requests_share_forward_passes(live_server: LiveServer, mnist_test: Digits) -> None:
    one = png_bytes(mnist_test.images[0].numpy())
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        before = {m["name"]: m for m in (await http.get("/model-info")).json()["models"]}["inception"]
        responses = await asyncio.gather(
            *(http.post("/predict?model=inception", files=[("files", ("d.png", one, "image/png"))]) for _ in range(64))
        )
        after = {m["name"]: m for m in (await http.get("/model-info")).json()["models"]}["inception"]
    assert all(r.status_code == 200 for r in responses)
    assert after["images"] - before["images"] == 64
    batches = after["batches"] - before["batches"]
    assert batches < 64, "no two requests shared a forward pass"
    metrics = httpx.get(live_server.url + "/metrics").text
    assert 'digits_batch_size_images_bucket{le="1.0",model="inception"}' in metrics


def test_body_limits_over_tcp(tmp_path: Path) -> None:
    server = start_server(tmp_path, DIGITS_MAX_REQUEST_BYTES="100000")
    try:
        declared = httpx.post(server.url + "/predict", content=b"x" * 200_000, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "larger than the limit of 100000 bytes" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for _ in range(50):
                yield b"y" * 10_000

        chunked = httpx.post(server.url + "/predict", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "larger than the limit" in chunked.json()["detail"]
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        stop_server(server)


def test_bad_weights_stop_startup_with_one_clear_message(tmp_path: Path) -> None:
    broken = tmp_path / "weights"
    broken.mkdir()
    for file in WEIGHTS.glob("*.*"):
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "inception.pt").write_bytes(b"not a checkpoint")
    server = start_server(tmp_path, wait_ready=False, DIGITS_WEIGHTS_DIR=str(broken))
    assert server.process.wait(timeout=60) != 0
    assert f"weights file {broken / 'inception.pt'} has sha256" in server.log()


def test_sigterm_answers_every_accepted_request(tmp_path: Path, mnist_test: Digits) -> None:
    server = start_server(tmp_path, DIGITS_SHUTDOWN_GRACE_S="20")
    batch = multipart(mnist_test.subset(torch.arange(64)))

    async def load() -> list[int | str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

            async def one() -> int | str:
                try:
                    return (await http.post("/predict?model=inception", files=batch)).status_code
                except httpx.TransportError as exc:
                    return type(exc).__name__

            tasks = [asyncio.create_task(one()) for _ in range(24)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # the rest are in flight
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    outcomes = asyncio.run(load())
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    answered = [o for o in outcomes if isinstance(o, int)]
    assert answered.count(200) >= 1
    log = server.log()
    assert log.index("Shutting down") < log.rindex('"status": 200'), "no request was in flight at SIGTERM"
    # Accepted requests are answered in full; requests after the listener closed are refused.
    assert all(o in (200, 503) or o == "ConnectError" for o in outcomes), outcomes
    assert "Application shutdown complete" in server.log()


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("DIGITS_MAX_BATCH_SIZE", "16")
    assert (parse_settings([]).port, parse_settings([]).max_batch_size) == (9000, 16)
    settings = parse_settings(["--port", "8123", "--max-batch-size", "8"])
    assert (settings.port, settings.max_batch_size) == (8123, 8)


def test_an_unknown_or_invalid_flag_stops_the_server_at_once() -> None:
    """A mistyped flag must not start a server on settings the user did not ask for."""
    for flags, message in ((["--prot", "8123"], "unrecognized arguments: --prot"), (["--port", "http"], "invalid setting PORT='http'")):
        finished = subprocess.run([sys.executable, "-m", "service", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 2, finished.stdout
        assert message in finished.stderr and "Traceback" not in finished.stderr, finished.stderr[-2000:]
