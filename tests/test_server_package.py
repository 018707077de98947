"""The server as a distribution: the built wheel carries the weights and serves them from any directory.

The wheel is built from a copy of the tree (so ``build/`` and ``*.egg-info`` never land in
the source), installed without dependencies into a folder of its own, and run from another
directory with that folder first on the path: the repository is nowhere on it.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, LiveServer, free_port, png_bytes, stop_server, stroke_digit_one, wait_until_ready

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "core", "models", "service", "weights")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.png"))
        else:
            shutil.copy(source, tree / name)
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(tree)]
    subprocess.run(command, check=True, capture_output=True)
    (built,) = dist.glob("digits_serving-*.whl")
    return built


def test_the_wheel_carries_the_weights_and_not_the_lab(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("inception", "resnet", "ensemble"):
        assert f"weights/{name}.json" in names
    assert {"weights/inception.pt", "weights/resnet.pt", "core/preprocess.py", "service/static/index.html"} <= names
    tops = {name.split("/")[0] for name in names if ".dist-info" not in name}
    assert tops == {"core", "models", "service", "weights"}, tops


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def run_from_elsewhere(installed: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_") and k != "PYTHONPATH"}
    return {**environment, "PYTHONPATH": str(installed)}


def test_the_installed_packages_are_the_ones_imported(installed: Path, tmp_path: Path) -> None:
    code = "import core, service, weights; print(service.__file__); print(core.__file__); print(weights.DIRECTORY)"
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=run_from_elsewhere(installed), capture_output=True, text=True, check=True
    )
    for line in shown.stdout.splitlines():
        assert line.startswith(str(installed)), line


@pytest.fixture(scope="module")
def wheel_server(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    port = free_port()
    log_path = elsewhere / "server.log"
    environment = {**run_from_elsewhere(installed), "HOST": "127.0.0.1", "PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=elsewhere, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


def test_the_installed_wheel_serves_the_committed_weights_from_another_directory(wheel_server: LiveServer) -> None:
    info = httpx.get(wheel_server.url + "/model-info", timeout=10).json()
    served = {model["name"]: model["weights"]["sha256"] for model in info["models"]}
    for name in ("inception", "resnet"):
        assert served[name] == json.loads((ROOT / "weights" / f"{name}.json").read_text())["sha256"]
    response = httpx.post(
        wheel_server.url + "/predict", files=[("files", ("one.png", png_bytes(stroke_digit_one()), "image/png"))], timeout=10
    )
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == 1
    assert "preprocessing version" not in wheel_server.log(), "the shipped thresholds were fitted with another preprocessing"


def test_training_commands_say_which_extra_they_need(installed: Path, tmp_path: Path) -> None:
    """With torchvision, tqdm and matplotlib not found (as in a serving install), ``digits-train`` says so and exits 2."""
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name in ('torchvision', 'tqdm', 'matplotlib') else real(name, *a)\n"
        "from models.commands import train\n"
        "sys.exit(train())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=run_from_elsewhere(installed), capture_output=True, text=True)
    assert done.returncode == 2
    assert "digits-train needs the train extra" in done.stderr and "pip install 'digits-serving[train]'" in done.stderr
