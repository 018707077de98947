"""What is written about a trained network: calibration, the is_digit rule, metrics, metadata, plots.

Everything chosen here (each temperature, each is_digit score and threshold) is fitted on the
validation split and the validation non-digit pool. The test set and the evaluation-seed pool
are measured only for the checkpoint being written, and only into its metadata.
"""

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from core.digit_rule import MAX_PIECE_DIGITS_REJECTED, SCORES, TEMPERATURES, digit_score, fit_threshold, rejected_fraction
from core.preprocess import PREPROCESSING_VERSION
from models.calibration import CalibratedClassifier, Ensemble, expected_calibration_error, fit_temperature
from models.checkpoint import load_classifier, load_ensemble, metadata_path, read_metadata, sha256_file, weights_path
from models.complexity import count_macs, count_parameters
from models.data import Digits, load_mnist, split_validation
from models.evaluate import classification_report, predict
from models.nondigits import EVALUATION_SEED, VALIDATION_SEED, nondigit_pool
from models.plots import plot_confusion, plot_learning_curves
from models.registry import ARCHITECTURES, ENSEMBLE
from models.strokes import drawn_digits
from models.training.loop import Fitted
from models.training.recipe import Data, Recipe

__all__ = ["calibrate_ensemble", "calibration_report", "is_digit_report", "refit_is_digit", "write_checkpoint"]

MAX_DRAWN_REJECTED = 0.01  # of the synthesised validation digits, every style: the target for real digits

IS_DIGIT_METHOD = (
    "the largest threshold on the digit score that rejects at most 0.5% of the 5,000 validation digits and at most "
    "1% of 2,500 synthesised validation digits in every style (models.strokes, seed 1000000); the score "
    "(max probability or 1 - normalised entropy of the calibrated probabilities softened by a temperature of "
    "1, 1.5, 2 or 3) is the pair that rejects the most validation non-digits (models.nondigits, seed 1000000) "
    "at its threshold; piece_threshold, for the pieces of a written number, is the largest on the same score that "
    "rejects at most 0.05% of those validation digits and 0.1% of the synthesised ones"
)


def _unlabelled(images: np.ndarray) -> Digits:
    return Digits(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long))


def is_digit_report(model: nn.Module, val: Digits, test: Digits, data: Data) -> dict[str, Any]:
    """Fit the is_digit threshold of a calibrated model on validation data; report test rates.

    Everything that is chosen (score and threshold) is chosen on the validation digits, the
    synthesised validation digits and the validation non-digit pool; the test digits and the
    evaluation-seed pools are only measured. A threshold may reject at most 0.5% of the MNIST
    validation digits and at most 1% of the synthesised ones (every style must pass).
    """
    pools = {
        "val": nondigit_pool(data.non_digits, VALIDATION_SEED, val.images.numpy()),
        "test": nondigit_pool(data.non_digits, EVALUATION_SEED, test.images.numpy()),
    }
    drawn = {
        split: drawn_digits(data.drawn_validation_digits, seed) for split, seed in (("val", VALIDATION_SEED), ("test", EVALUATION_SEED))
    }
    probs = {
        split: (predict(model, digits).numpy(), predict(model, drawn[split]).numpy(), predict(model, _unlabelled(pools[split])).numpy())
        for split, digits in (("val", val), ("test", test))
    }
    val_digits, val_drawn, val_nondigits = probs["val"]
    candidates = list(itertools.product(SCORES, TEMPERATURES))
    fitted = {
        (score, t): min(
            fit_threshold(digit_score(val_digits, score, t)), fit_threshold(digit_score(val_drawn, score, t), MAX_DRAWN_REJECTED)
        )
        for score, t in candidates
    }
    rejected = {(score, t): rejected_fraction(digit_score(val_nondigits, score, t), fitted[score, t]) for score, t in candidates}
    # Ties go to the smaller temperature, then to the max probability: the plainer score.
    score, temperature = max(candidates, key=lambda c: (rejected[c], -c[1], c[0] == "max_probability"))
    threshold = fitted[score, temperature]
    piece_threshold = min(
        fit_threshold(digit_score(val_digits, score, temperature), MAX_PIECE_DIGITS_REJECTED),
        fit_threshold(digit_score(val_drawn, score, temperature), 2 * MAX_PIECE_DIGITS_REJECTED),
    )

    def rates(split: str) -> dict[str, float]:
        digits, drawn, nondigits = (digit_score(p, score, temperature) for p in probs[split])
        return {
            "digits_rejected": rejected_fraction(digits, threshold),
            "drawn_digits_rejected": rejected_fraction(drawn, threshold),
            "non_digits_rejected": rejected_fraction(nondigits, threshold),
            "digits_rejected_as_pieces": rejected_fraction(digits, piece_threshold),
            "non_digits_rejected_as_pieces": rejected_fraction(nondigits, piece_threshold),
        }

    return {
        "method": IS_DIGIT_METHOD,
        "preprocessing_version": PREPROCESSING_VERSION,
        "score": score,
        "temperature": temperature,
        "threshold": threshold,
        "piece_threshold": piece_threshold,
        "validation": {
            **rates("val"),
            "non_digit_images": len(pools["val"]),
            "digit_images": len(val),
            "drawn_digit_images": len(drawn["val"]),
        },
        "validation_non_digits_rejected_by_candidate": {f"{name} at temperature {t:g}": rate for (name, t), rate in rejected.items()},
        "test": {**rates("test"), "non_digit_images": len(pools["test"]), "digit_images": len(test), "non_digit_seed": EVALUATION_SEED},
    }


def calibration_report(
    val_scores: torch.Tensor, test_scores: torch.Tensor, val: Digits, test: Digits, *, from_probs: bool
) -> dict[str, Any]:
    """Fit a temperature on validation scores (logits, or probabilities for the ensemble)."""
    to_logits = (lambda p: torch.log(p.clamp_min(1e-12))) if from_probs else (lambda s: s)
    temperature = fit_temperature(to_logits(val_scores), val.labels)
    return {
        "method": "temperature scaling fitted on the validation split (NLL, L-BFGS)",
        "temperature": temperature,
        "ece_bins": 15,
        "val_ece_after": expected_calibration_error(torch.softmax(to_logits(val_scores) / temperature, 1), val.labels),
        "test_ece_before": expected_calibration_error(torch.softmax(to_logits(test_scores), 1), test.labels),
        "test_ece_after": expected_calibration_error(torch.softmax(to_logits(test_scores) / temperature, 1), test.labels),
    }


def _metrics(report: dict[str, Any], val_accuracy: float) -> dict[str, Any]:
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": report["accuracy"],
        "test_errors": report["errors"],
        "per_class_test_accuracy": report["per_class_accuracy"],
        "confusion_matrix": report["confusion_matrix"],
    }


def _environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _splits(data: Data, data_dir: Path, download: bool) -> tuple[Digits, Digits]:
    """The validation split ``data`` names, and the test set."""
    _, val = split_validation(load_mnist(data_dir, train=True, download=download), data.val_size, data.split_seed)
    return val, load_mnist(data_dir, train=False, download=download)


def _members_data(members: Mapping[str, tuple[nn.Module, dict[str, Any]]]) -> Data:
    """The validation split the ensemble's members share, with the smallest validation pools of any member."""
    data = [Recipe.from_json(meta["recipe"]).data for _, meta in members.values()]
    splits = {(d.split_seed, d.val_size) for d in data}
    if len(splits) != 1:
        raise SystemExit(f"ensemble not calibrated: the members used different validation splits {sorted(splits)}")
    return min(data, key=lambda d: d.non_digits)


def _summary(name: str, val_accuracy: float, calibration: dict[str, Any], written: Path) -> None:
    """Validation figures only: the test figures are in the metadata, for the checkpoint kept."""
    print(
        f"{name}: val {100 * val_accuracy:.2f}%, T={calibration['temperature']:.3f}, "
        f"val ECE {100 * calibration['val_ece_after']:.3f}%; wrote {written}"
    )


def write_checkpoint(
    out: Path, recipe: Recipe, fitted: Fitted, train_images: int, val: Digits, test: Digits, started: float, command: str | None
) -> dict[str, Any]:
    """Calibrate the fitted network, fit its is_digit rule, write ``<out>/<arch>.pt``, its metadata and plots."""
    net, arch = fitted.net, recipe.arch
    val_logits, test_logits = predict(net, val), predict(net, test)
    calibration = calibration_report(val_logits, test_logits, val, test, from_probs=False)
    report = classification_report(torch.softmax(test_logits / calibration["temperature"], 1), test.labels)
    out.mkdir(parents=True, exist_ok=True)
    pt_path = weights_path(out, arch)
    torch.save(net.state_dict(), pt_path)
    calibrated = CalibratedClassifier(net, calibration["temperature"]).eval()
    metadata: dict[str, Any] = {
        "name": arch,
        "architecture": ARCHITECTURES[arch].description,
        "parameters": count_parameters(net),
        "macs_per_image": count_macs(net),
        "input_shape": [1, 28, 28],
        "file": pt_path.name,
        "file_size_bytes": pt_path.stat().st_size,
        "sha256": sha256_file(pt_path),
        "metrics": _metrics(report, fitted.history[fitted.best_epoch - 1]["val_accuracy"]),
        "calibration": calibration,
        "best_epoch": fitted.best_epoch,
        "recipe": dataclasses.asdict(recipe),
        "data": {"train_images": train_images, "val_images": len(val), "test_images": len(test)},
        "training_wall_time_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "environment": _environment(),
        "command": command,
        "is_digit": is_digit_report(calibrated, val, test, recipe.data),
        "history": fitted.history,
    }
    _write_json(metadata_path(out, arch), metadata)
    plot_learning_curves(fitted.history, out / f"{arch}-curves.png", f"{arch}: best epoch {fitted.best_epoch}")
    plot_confusion(report["confusion_matrix"], out / f"{arch}-confusion.png", f"{arch}: test confusion")
    _summary(f"{arch} (best epoch {fitted.best_epoch})", metadata["metrics"]["val_accuracy"], calibration, pt_path)
    return metadata


def calibrate_ensemble(out: Path, data_dir: Path, download: bool) -> None:
    """Fit the ensemble's temperature on the members' shared validation split; write its metadata."""
    members = {name: load_classifier(out, name) for name in ARCHITECTURES}
    data = _members_data(members)
    val, test = _splits(data, data_dir, download)
    raw = Ensemble([model for model, _ in members.values()])
    val_probs, test_probs = predict(raw.mean_probabilities, val), predict(raw.mean_probabilities, test)
    calibration = calibration_report(val_probs, test_probs, val, test, from_probs=True)
    calibrated = Ensemble([model for model, _ in members.values()], calibration["temperature"]).eval()
    report = classification_report(predict(calibrated, test), test.labels)
    val_accuracy = float((val_probs.argmax(1) == val.labels).double().mean())
    _write_json(
        metadata_path(out, ENSEMBLE),
        {
            "name": ENSEMBLE,
            "architecture": "Ensemble: mean of the calibrated softmax outputs of " + " and ".join(members),
            "members": {name: meta["sha256"] for name, (_, meta) in members.items()},
            "parameters": sum(meta["parameters"] for _, meta in members.values()),
            "macs_per_image": sum(meta["macs_per_image"] for _, meta in members.values()),
            "input_shape": [1, 28, 28],
            "metrics": _metrics(report, val_accuracy),
            "calibration": calibration,
            "is_digit": is_digit_report(calibrated, val, test, data),
            "environment": _environment(),
        },
    )
    plot_confusion(report["confusion_matrix"], out / f"{ENSEMBLE}-confusion.png", "ensemble: test confusion")
    _summary(ENSEMBLE, val_accuracy, calibration, metadata_path(out, ENSEMBLE))


def refit_is_digit(out: Path, name: str, data_dir: Path, download: bool) -> None:
    """Rewrite only the is_digit block of ``<out>/<name>.json`` for the checkpoints already there."""
    meta = read_metadata(out, name)
    model: nn.Module
    if name == ENSEMBLE:
        members = {arch: load_classifier(out, arch) for arch in ARCHITECTURES}
        model, _ = load_ensemble(out, {n: m for n, (m, _) in members.items()}, {n: m["sha256"] for n, (_, m) in members.items()})
        data = _members_data(members)
    else:
        model, _ = load_classifier(out, name)
        data = Recipe.from_json(meta["recipe"]).data
    val, test = _splits(data, data_dir, download)
    meta["is_digit"] = is_digit_report(model, val, test, data)
    _write_json(metadata_path(out, name), meta)
    shown = ("score", "temperature", "threshold", "piece_threshold", "validation")
    print(f"{name}: is_digit {json.dumps({k: meta['is_digit'][k] for k in shown})}")
