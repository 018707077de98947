"""The committed weights: intact, and as accurate and calibrated as the project promises."""

import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import nn

from core.digit_rule import is_digit
from models.calibration import expected_calibration_error
from models.checkpoint import load_classifier, load_ensemble, sha256_file
from models.data import Digits
from models.evaluate import classification_report, predict
from models.nondigits import EVALUATION_SEED, nondigit_pool
from models.registry import ARCHITECTURES, SERVED_MODELS
from models.training.recipe import DEFAULT_RECIPES, Recipe
from tests.conftest import WEIGHTS

# Official 10k MNIST test set; the course reached 98.88% (inception) and 99.01% (resnet).
TARGET_ACCURACY = {"inception": 0.9955, "resnet": 0.9960, "ensemble": 0.9970}
MAX_ECE = 0.003


def _served_models_expecting_failure(failing: set[str], reason: str) -> list[Any]:
    """Every served model as a parameter, those in ``failing`` marked as strict expected failures."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason)) if name in failing else name for name in SERVED_MODELS]


@pytest.fixture(scope="module")
def served() -> dict[str, nn.Module]:
    members = {name: load_classifier(WEIGHTS, name) for name in ARCHITECTURES}
    ensemble, _ = load_ensemble(WEIGHTS, {n: m for n, (m, _) in members.items()}, {n: meta["sha256"] for n, (_, meta) in members.items()})
    return {**{name: model for name, (model, _) in members.items()}, "ensemble": ensemble}


@pytest.fixture(scope="module")
def probabilities(served: dict[str, nn.Module], mnist_test: Digits) -> dict[str, torch.Tensor]:
    return {name: predict(model, mnist_test) for name, model in served.items()}


@pytest.fixture(scope="module")
def evaluation_nondigits(mnist_test: Digits) -> Digits:
    """A small sample of the evaluation-seed non-digits (pasted digits from the test set)."""
    pool = torch.from_numpy(nondigit_pool(400, EVALUATION_SEED, mnist_test.images.numpy()))
    return Digits(pool, torch.zeros(len(pool), dtype=torch.long))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sha256_in_metadata_matches_the_checkpoint(arch: str) -> None:
    metadata = json.loads((WEIGHTS / f"{arch}.json").read_text())
    assert metadata["sha256"] == sha256_file(WEIGHTS / f"{arch}.pt")
    assert metadata["file_size_bytes"] == (WEIGHTS / f"{arch}.pt").stat().st_size


# The residual net's from-scratch recipe (synthesised styles, degradations and outliers from the first epoch)
# reads 99.56% of the test set, 4 images under its target, with a test calibration error of 0.37%
# (docs/training.md, Selection); the ensemble, which is served by default, meets both.
BELOW_ACCURACY_TARGET = {"resnet"}


@pytest.mark.parametrize(
    "name",
    _served_models_expecting_failure(BELOW_ACCURACY_TARGET, "99.56%: the from-scratch recipe misses 99.60% by 4 images"),
)
def test_accuracy_target_on_the_official_test_set(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    report = classification_report(probabilities[name], mnist_test.labels)
    assert report["accuracy"] >= TARGET_ACCURACY[name], f"{name}: {100 * report['accuracy']:.2f}%"


@pytest.mark.parametrize("name", SERVED_MODELS)
def test_metadata_reports_the_measured_accuracy(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    report = classification_report(probabilities[name], mnist_test.labels)
    recorded = json.loads((WEIGHTS / f"{name}.json").read_text())["metrics"]["test_accuracy"]
    assert report["accuracy"] == pytest.approx(recorded, abs=1e-9)
    assert report["accuracy"] > {"inception": 0.9888, "resnet": 0.9901, "ensemble": 0.9901}[name]  # the course's results


@pytest.mark.parametrize(
    "name",
    _served_models_expecting_failure(BELOW_ACCURACY_TARGET, "0.37%: the from-scratch recipe's test ECE misses 0.3%"),
)
def test_calibrated_confidence(probabilities: dict[str, torch.Tensor], mnist_test: Digits, name: str) -> None:
    assert expected_calibration_error(probabilities[name], mnist_test.labels) <= MAX_ECE


def _by_field(recipe: dict[str, Any]) -> dict[str, Any]:
    """{"arch": ..., "section.field": value, ...} of a recipe as its metadata records it."""
    return {"arch": recipe["arch"]} | {
        f"{section}.{field}": value for section, values in recipe.items() if section != "arch" for field, value in values.items()
    }


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_make_train_reproduces_the_committed_recipe(arch: str) -> None:
    """`python -m models.train --arch ARCH` with no recipe flags trains what is committed, field by field."""
    recipe = json.loads((WEIGHTS / f"{arch}.json").read_text())["recipe"]
    recorded = _by_field(recipe)
    default = _by_field(json.loads(json.dumps(dataclasses.asdict(DEFAULT_RECIPES[arch]))))  # tuples as JSON lists
    assert sorted(recorded) == sorted(default), f"{arch}: the recorded recipe and the default recipe have different fields"
    for field, value in recorded.items():
        assert value == default[field], f"{arch}: the committed weights used {field}={value}, the default is {default[field]}"
    assert Recipe.from_json(recipe) == DEFAULT_RECIPES[arch]


# The committed inception checkpoint is the 60-epoch one, not fine-tuned with outlier exposure
# (no fine-tuning run kept its validation accuracy; README, Training): its threshold rejects only
# about half of the non-digits.
NOT_EXPOSED_TO_OUTLIERS = {"inception"}


@pytest.mark.parametrize(
    "name",
    _served_models_expecting_failure(NOT_EXPOSED_TO_OUTLIERS, "not trained with outlier exposure"),
)
def test_is_digit_threshold_rejects_non_digits_and_accepts_digits(
    served: dict[str, nn.Module], probabilities: dict[str, torch.Tensor], evaluation_nondigits: Digits, name: str
) -> None:
    """The committed threshold, through the real model: >= 90% of non-digits out, >= 99% of digits in."""
    block = json.loads((WEIGHTS / f"{name}.json").read_text())["is_digit"]
    threshold, score, temperature = block["threshold"], block["score"], block["temperature"]
    assert block["validation"]["digits_rejected"] <= 0.005
    accepted = is_digit(probabilities[name][:500].numpy(), threshold, score, temperature)
    assert accepted.mean() >= 0.99, f"{name}: {100 * accepted.mean():.1f}% of the first 500 test digits accepted"
    rejected = ~is_digit(predict(served[name], evaluation_nondigits).numpy(), threshold, score, temperature)
    assert rejected.mean() >= 0.90, f"{name}: {100 * rejected.mean():.1f}% of non-digits rejected"


@pytest.mark.parametrize("name", SERVED_MODELS)
def test_the_piece_threshold_lets_nearly_every_digit_through(probabilities: dict[str, torch.Tensor], name: str) -> None:
    """A piece of a written number is held to a lower bar than an image: >= 99.7% of the test digits pass it."""
    block = json.loads((WEIGHTS / f"{name}.json").read_text())["is_digit"]
    assert block["piece_threshold"] < block["threshold"]
    assert block["validation"]["digits_rejected_as_pieces"] <= 0.0005
    passed = is_digit(probabilities[name].numpy(), block["piece_threshold"], block["score"], block["temperature"])
    assert passed.mean() >= 0.997, f"{name}: {100 * passed.mean():.2f}% of the test digits pass as pieces"
