"""New weights without a restart: the model repository extension over real HTTP, tritonclient included.

Each server serves a copy of the committed weights in a folder of its own; the tests write
new weights there (a perturbed copy, a corrupt file, a network that reads nothing) and ask
the server to load them while clients keep sending requests.
"""

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from models.checkpoint import sha256_file
from models.registry import build
from service.inference.loader import load_models
from service.inference.smoke import SMOKE_MIN_ACCURACY, smoke_batch
from tests.conftest import WEIGHTS, LiveServer, png_bytes, start_server, stop_server, stroke_digit_one

pytestmark = pytest.mark.slow

ONE = png_bytes(stroke_digit_one())


def test_the_committed_networks_pass_the_smoke_check_with_room_to_spare() -> None:
    images, labels = smoke_batch()
    for name, model in load_models(WEIGHTS, torch.device("cpu")).items():
        read = float(np.mean(model.forward(images).argmax(axis=1) == labels))
        assert read >= max(SMOKE_MIN_ACCURACY, 59 / 60), f"{name} reads {read:.1%} of the smoke batch"


def copy_of_weights(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    for path in WEIGHTS.glob("*"):
        if path.suffix in (".pt", ".json"):
            shutil.copy(path, folder / path.name)
    return folder


def write_resnet(folder: Path, state: dict[str, torch.Tensor]) -> str:
    """``state`` as resnet's weights, with its metadata and the ensemble's naming the new file."""
    torch.save(state, folder / "resnet.pt")
    sha = sha256_file(folder / "resnet.pt")
    for name, key in (("resnet", None), ("ensemble", "members")):
        metadata = json.loads((folder / f"{name}.json").read_text())
        if key is None:
            metadata["sha256"] = sha
        else:
            metadata[key]["resnet"] = sha
        (folder / f"{name}.json").write_text(json.dumps(metadata, indent=2))
    return sha


def committed_resnet() -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(WEIGHTS / "resnet.pt", weights_only=True)
    return state


def served_sha(server: LiveServer) -> dict[str, str | None]:
    info = httpx.get(server.url + "/model-info", timeout=10).json()
    return {model["name"]: model["weights"]["sha256"] for model in info["models"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    tmp_path = tmp_path_factory.mktemp("repository")
    folder = copy_of_weights(tmp_path)
    live = start_server(tmp_path, DIGITS_WEIGHTS_DIR=str(folder), DIGITS_MODEL_CONTROL="explicit")
    yield live, folder
    stop_server(live)


class Clients:
    """Threads sending /predict in a loop until stopped; every answer's status is kept.

    Entering returns once the first answer is in, so what the test does next happens under
    load, and a step that is over in milliseconds still has answers to check.
    """

    def __init__(self, url: str, count: int = 4) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.labels: list[int] = []
        self.stop = threading.Event()
        self.answered = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(count)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/predict?model=ensemble", files=[("files", ("one.png", ONE, "image/png"))])
                except httpx.TransportError:
                    self.statuses.append(0)
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.labels.append(response.json()["predictions"][0]["label"])
                self.answered.set()

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        if not self.answered.wait(timeout=30):
            self.__exit__()
            raise AssertionError(f"no answer to /predict from {self.url} within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_new_weights_are_swapped_in_under_load_with_no_failed_request(server: tuple[LiveServer, Path]) -> None:
    live, folder = server
    before = served_sha(live)
    rng = torch.Generator().manual_seed(0)
    nudged = {k: v + 1e-4 * torch.randn(v.shape, generator=rng) if v.is_floating_point() else v for k, v in committed_resnet().items()}
    sha = write_resnet(folder, nudged)
    client = triton_http.InferenceServerClient(live.url.removeprefix("http://"))
    with Clients(live.url) as clients:
        client.load_model("resnet")
        after = served_sha(live)
    assert after["resnet"] == sha != before["resnet"]
    assert after["inception"] == before["inception"]
    assert clients.statuses and set(clients.statuses) == {200}, f"{len(clients.statuses)} requests: {sorted(set(clients.statuses))}"
    assert set(clients.labels) == {1}
    assert client.is_model_ready("resnet")
    metrics = httpx.get(live.url + "/metrics", timeout=10).text
    assert f'digits_model_info{{device="cpu",model="resnet",sha256="{sha}"}} 1.0' in metrics
    assert f'digits_model_info{{device="cpu",model="resnet",sha256="{before["resnet"]}"}} 0.0' in metrics


def test_corrupt_weights_are_refused_and_the_old_ones_keep_serving(server: tuple[LiveServer, Path]) -> None:
    live, folder = server
    before = served_sha(live)
    good = (folder / "resnet.pt").read_bytes()
    (folder / "resnet.pt").write_bytes(good[: len(good) // 2])
    try:
        with Clients(live.url, count=2) as clients:
            response = httpx.post(live.url + "/v2/repository/models/resnet/load", timeout=30)
        assert response.status_code == 400
        assert "model 'resnet' was not loaded" in response.json()["error"] and "resnet.pt has sha256" in response.json()["error"]
        assert served_sha(live) == before
        assert set(clients.statuses) == {200}
        with pytest.raises(InferenceServerException, match="was not loaded"):
            triton_http.InferenceServerClient(live.url.removeprefix("http://")).load_model("resnet")
    finally:
        (folder / "resnet.pt").write_bytes(good)


def test_weights_that_cannot_read_digits_are_refused_by_the_smoke_check(server: tuple[LiveServer, Path]) -> None:
    live, folder = server
    before = served_sha(live)
    saved = {name: (folder / name).read_bytes() for name in ("resnet.pt", "resnet.json", "ensemble.json")}
    torch.manual_seed(0)
    write_resnet(folder, build("resnet").state_dict())  # a fresh network: its hash is right, its answers are not
    try:
        response = httpx.post(live.url + "/v2/repository/models/resnet/load", timeout=30)
        assert response.status_code == 400
        assert "fail the smoke check" in response.json()["error"] and "resnet reads" in response.json()["error"]
        assert served_sha(live) == before
    finally:
        for name, data in saved.items():
            (folder / name).write_bytes(data)


def test_an_unloaded_model_answers_404_until_it_is_loaded_again(server: tuple[LiveServer, Path]) -> None:
    live, _ = server
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.post("/v2/repository/models/inception/unload").status_code == 200
        index = {entry["name"]: entry for entry in http.post("/v2/repository/index").json()}
        assert index["inception"]["state"] == "UNAVAILABLE" and index["inception"]["reason"] == "unloaded"
        assert index["resnet"]["state"] == "READY"
        refused = http.post("/predict?model=inception", files=[("files", ("one.png", ONE, "image/png"))])
        assert refused.status_code == 404 and "model 'inception' is unloaded" in refused.json()["detail"]
        assert http.post("/predict?model=ensemble", files=[("files", ("one.png", ONE, "image/png"))]).status_code == 200
        assert http.post("/v2/repository/models/inception/load").status_code == 200
        assert http.post("/predict?model=inception", files=[("files", ("one.png", ONE, "image/png"))]).status_code == 200


def test_the_repository_is_off_unless_model_control_is_explicit(live_server: LiveServer) -> None:
    response = httpx.post(live_server.url + "/v2/repository/models/resnet/load", timeout=10)
    assert response.status_code == 403
    assert "DIGITS_MODEL_CONTROL=explicit" in response.json()["error"]


def test_the_repository_is_behind_the_api_key(tmp_path: Path) -> None:
    live = start_server(tmp_path, DIGITS_MODEL_CONTROL="explicit", DIGITS_API_KEY="s3cret")
    try:
        assert httpx.post(live.url + "/v2/repository/index", timeout=10).status_code == 401
        keyed = httpx.post(live.url + "/v2/repository/index", headers={"X-API-Key": "s3cret"}, timeout=10)
        assert keyed.status_code == 200 and {entry["name"] for entry in keyed.json()} == {"inception", "resnet", "ensemble"}
    finally:
        stop_server(live)


def test_with_workers_one_load_swaps_the_weights_for_every_worker(tmp_path: Path) -> None:
    folder = copy_of_weights(tmp_path)
    live = start_server(tmp_path, DIGITS_WEIGHTS_DIR=str(folder), DIGITS_MODEL_CONTROL="explicit", DIGITS_WORKERS="2")
    try:
        rng = torch.Generator().manual_seed(1)
        nudged = {k: v + 1e-4 * torch.randn(v.shape, generator=rng) if v.is_floating_point() else v for k, v in committed_resnet().items()}
        sha = write_resnet(folder, nudged)
        with Clients(live.url) as clients:
            loaded = httpx.post(live.url + "/v2/repository/models/resnet/load", timeout=30)
        assert loaded.status_code == 200 and set(loaded.json()["swapped"]) == {"resnet", "ensemble"}
        assert clients.statuses and set(clients.statuses) == {200}
        with httpx.Client(base_url=live.url, timeout=10, trust_env=False) as http:
            for _ in range(20):  # a new connection each: both workers answer some
                response = http.get("/model-info", headers={"Connection": "close"})
                assert {m["name"]: m["weights"]["sha256"] for m in response.json()["models"]}["resnet"] == sha
        (folder / "resnet.pt").write_bytes(b"not a checkpoint")
        refused = httpx.post(live.url + "/v2/repository/models/resnet/load", timeout=30)
        assert refused.status_code == 400 and "resnet.pt" in refused.json()["error"]
        assert served_sha(live)["resnet"] == sha
        assert_sighup_reloads(live, folder)
    finally:
        stop_server(live)


def assert_sighup_reloads(live: LiveServer, folder: Path) -> None:
    """SIGHUP to the server's process (the supervisor, with workers) loads what is on disk."""
    rng = torch.Generator().manual_seed(2)
    nudged = {k: v + 1e-4 * torch.randn(v.shape, generator=rng) if v.is_floating_point() else v for k, v in committed_resnet().items()}
    sha = write_resnet(folder, nudged)
    os.kill(live.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while served_sha(live)["resnet"] != sha and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_sha(live)["resnet"] == sha
    assert httpx.get(live.url + "/readyz", timeout=10).status_code == 200


def test_sighup_loads_the_weights_on_disk(server: tuple[LiveServer, Path]) -> None:
    assert_sighup_reloads(*server)
