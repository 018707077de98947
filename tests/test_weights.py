"""The committed weights: intact, and as accurate and calibrated as the project promises."""

import dataclasses
import json

import pytest
import torch

from models.calibration import expected_calibration_error
from models.checkpoint import load_classifier, load_ensemble, sha256_file
from models.data import Digits
from models.evaluate import classification_report, predict
from models.registry import ARCHITECTURES, SERVED_MODELS
from models.train import DEFAULT_RECIPES
from tests.conftest import WEIGHTS

# Official 10k MNIST test set; the course reached 98.88% (inception) and 99.01% (resnet).
TARGET_ACCURACY = {"inception": 0.9955, "resnet": 0.9960, "ensemble": 0.9970}
MAX_ECE = 0.003


@pytest.fixture(scope="module")
def probabilities(mnist_test: Digits) -> dict[str, torch.Tensor]:
    members = {name: load_classifier(WEIGHTS, name) for name in ARCHITECTURES}
    ensemble, _ = load_ensemble(WEIGHTS, {n: m for n, (m, _) in members.items()}, {n: meta["sha256"] for n, (_, meta) in members.items()})
    outputs = {name: predict(model, mnist_test) for name, (model, _) in members.items()}
    outputs["ensemble"] = predict(ensemble, mnist_test)
    return outputs


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sha256_in_metadata_matches_the_checkpoint(arch: str) -> None:
    metadata = json.loads((WEIGHTS / f"{arch}.json").read_text())
    assert metadata["sha256"] == sha256_file(WEIGHTS / f"{arch}.pt")
    assert metadata["file_size_bytes"] == (WEIGHTS / f"{arch}.pt").stat().st_size


@pytest.mark.parametrize("name", SERVED_MODELS)
def test_accuracy_target_on_the_official_test_set(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    report = classification_report(probabilities[name], mnist_test.labels)
    assert report["accuracy"] >= TARGET_ACCURACY[name], f"{name}: {100 * report['accuracy']:.2f}%"


@pytest.mark.parametrize("name", SERVED_MODELS)
def test_metadata_reports_the_measured_accuracy(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    report = classification_report(probabilities[name], mnist_test.labels)
    recorded = json.loads((WEIGHTS / f"{name}.json").read_text())["metrics"]["test_accuracy"]
    assert report["accuracy"] == pytest.approx(recorded, abs=1e-9)
    assert report["accuracy"] > {"inception": 0.9888, "resnet": 0.9901, "ensemble": 0.9901}[name]  # the course's results


@pytest.mark.parametrize("name", SERVED_MODELS)
def test_calibrated_confidence(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    assert expected_calibration_error(probabilities[name], mnist_test.labels) <= MAX_ECE


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_make_train_reproduces_the_committed_recipe(arch: str) -> None:
    """`python -m models.train --arch ARCH` with no flags trains what is committed."""
    recorded = json.loads((WEIGHTS / f"{arch}.json").read_text())["recipe"]
    default = dataclasses.asdict(DEFAULT_RECIPES[arch])
    for field, value in recorded.items():
        expected = list(default[field]) if isinstance(default[field], tuple) else default[field]
        assert value == expected, f"{arch}: the committed weights used {field}={value}, the default is {expected}"
