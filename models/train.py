"""Offline training: one architecture per run, best epoch by validation accuracy.

    python -m models.train --arch resnet --data-dir ../shared/data --no-download
    python -m models.train --arch inception --data-dir ../shared/data --no-download

Writes ``<out>/<arch>.pt`` (a state_dict for ``torch.load(weights_only=True)``),
``<out>/<arch>.json`` (metrics, calibration, the full recipe) and two plots. When the
other architecture's checkpoint is already in ``<out>``, the ensemble of the two is
calibrated on the same validation split and written as ``<out>/ensemble.json``;
``--arch ensemble`` does only that step, for checkpoints trained separately.

The 10k test set is only ever reported on; the epoch and every temperature are chosen on
the validation split held out from the 60k training images.

Fine-tuning (``--init FILE``, whose sha256 goes into the recipe) continues from a committed
checkpoint with the degradations of ``models.augment`` and outlier exposure on the synthetic
non-digits of ``models.nondigits``. Its epoch is chosen by ``--selection mixed``, a rule fixed
before any fine-tuning run: the epoch with the best mean of the clean validation accuracy and
the accuracy on the same 5,000 validation digits degraded (8x8, 16x16, 1-bit; the mean of the
three), among the epochs whose clean validation accuracy is at least
``--selection-min-val-accuracy`` (the committed checkpoint's validation accuracy minus 0.04%,
i.e. two images). The fine-tuned checkpoint replaces the committed one only when it also meets
the test targets of tests/test_weights.py, measured once, on the chosen epoch only.
"""

import argparse
import copy
import dataclasses
import itertools
import json
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from core.digit_rule import SCORES, TEMPERATURES, digit_score, fit_threshold, rejected_fraction
from core.preprocess import PREPROCESSING_VERSION
from models.augment import ROBUSTNESS_VARIANTS, Degradations, degrade_validation
from models.calibration import CalibratedClassifier, Ensemble, expected_calibration_error, fit_temperature
from models.checkpoint import load_classifier, load_ensemble, metadata_path, read_metadata, sha256_file, weights_path
from models.complexity import count_macs, count_parameters
from models.data import AugmentedDigits, Digits, augmentation, load_mnist, normalise, split_validation
from models.evaluate import classification_report, predict
from models.nondigits import EVALUATION_SEED, TRAIN_SEED, VALIDATION_SEED, nondigit_pool
from models.plots import plot_confusion, plot_learning_curves
from models.registry import ARCHITECTURES, ENSEMBLE, build

__all__ = ["Recipe", "main", "train"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every choice that shapes the weights; stored verbatim in the metadata."""

    arch: str
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "AdamW"
    lr: float = 3e-3
    weight_decay: float = 5e-2
    schedule: str = "OneCycleLR(pct_start=0.25, cosine anneal)"
    pct_start: float = 0.25
    ema_decay: float = 0.999
    label_smoothing: float = 0.1
    aug_degrees: float = 12.0
    aug_translate: float = 0.1
    aug_scale: tuple[float, float] = (0.85, 1.15)
    aug_shear: float = 8.0
    aug_elastic_p: float = 0.5
    aug_elastic_alpha: float = 34.0
    aug_elastic_sigma: float = 4.0
    clean_epochs: int = 0
    seed: int = 0
    split_seed: int = 2024
    val_size: int = 5000
    train_limit: int | None = None
    grad_clip: float | None = None
    teacher: str | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    aug_stroke_p: float = 0.0
    aug_lowres_p: float = 0.0
    aug_lowres_sizes: tuple[int, int] = (7, 16)
    aug_binarise_p: float = 0.0
    aug_contrast_p: float = 0.0
    aug_noise_p: float = 0.0
    aug_thumbnail_p: float = 0.0
    outlier_fraction: float = 0.0
    outlier_weight: float = 0.0
    outlier_seed: int = TRAIN_SEED
    init_sha256: str | None = None
    init_logit_scale: float = 1.0
    selection: str = "val_accuracy"
    selection_min_val_accuracy: float = 0.0


# The recipe each committed checkpoint was trained with. Chosen per architecture on
# validation accuracy: strong augmentation and label smoothing lifted the residual net,
# but held back the Inception net, whose InceptionA blocks have no non-linearity inside;
# it does best with mild augmentation and a last few epochs on the images as they are.
DEFAULT_RECIPES = {
    "inception": Recipe(
        "inception",
        epochs=60,
        weight_decay=1e-3,
        label_smoothing=0.0,
        aug_degrees=8.0,
        aug_scale=(0.92, 1.08),
        aug_shear=0.0,
        aug_elastic_p=0.0,
        clean_epochs=8,
        seed=2,
        grad_clip=5.0,
    ),
    # Fine-tuned twice from the 60-epoch checkpoint trained with Recipe("resnet", epochs=60)
    # (sha256 da01df65..., weights/resnet.pt at commit 9ff2348): 12 epochs with the degradations
    # of models.augment and outlier exposure (sha256 025219a4..., weights/resnet.pt at commit
    # 61ac548), then this recipe, which adds thumbnails; each epoch chosen by the "mixed" rule.
    "resnet": Recipe(
        "resnet",
        epochs=15,
        lr=1e-3,
        aug_stroke_p=0.2,
        aug_lowres_p=0.2,
        aug_binarise_p=0.15,
        aug_contrast_p=0.2,
        aug_noise_p=0.15,
        aug_thumbnail_p=0.35,
        outlier_fraction=0.125,
        outlier_weight=0.5,
        init_sha256="025219a4804e710176484928ded94380c0163c56e7e3de979004300e11f50cee",
        selection="mixed",
        selection_min_val_accuracy=0.9964,
    ),
}


def _epoch_loss_accuracy(model: nn.Module, digits: Digits) -> tuple[float, float]:
    logits = predict(model, digits)
    return float(F.cross_entropy(logits, digits.labels)), float((logits.argmax(1) == digits.labels).double().mean())


def _accuracy(model: nn.Module, digits: Digits) -> float:
    return float((predict(model, digits).argmax(1) == digits.labels).double().mean())


def _loss(recipe: Recipe, logits: torch.Tensor, labels: torch.Tensor, teacher_probs: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy, mixed with distillation towards the teacher's softened probabilities.

    The teacher's soft targets carry which digits look alike, which the one-hot labels do
    not: the small Inception net learns more from them than from the labels alone.
    """
    hard = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    if teacher_probs is None:
        return hard
    tau = recipe.distill_temperature
    targets = torch.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / tau, dim=1)
    soft = F.kl_div(F.log_softmax(logits / tau, dim=1), targets, reduction="batchmean") * tau**2
    return (1 - recipe.distill_weight) * hard + recipe.distill_weight * soft


def outlier_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of non-digit logits against the uniform distribution (outlier exposure).

    Hendrycks et al. 2019: mean over images of -1/C sum_c log softmax(z)_c, which is
    log C exactly when the output is uniform and grows as one class takes over, so it
    pushes the largest probability of a non-digit down to 1/C.
    """
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean()


@dataclasses.dataclass(frozen=True)
class _Validation:
    """What each epoch is measured on: the clean split, its fixed degradations, and non-digits."""

    clean: Digits
    degraded: dict[str, Digits]
    nondigits: Digits


def _validation_sets(val: Digits, nondigit_images: int) -> _Validation:
    degraded = {variant: Digits(degrade_validation(val.images, variant), val.labels) for variant in ROBUSTNESS_VARIANTS}
    pool = torch.from_numpy(nondigit_pool(nondigit_images, VALIDATION_SEED, val.images.numpy()))
    return _Validation(val, degraded, Digits(pool, torch.zeros(len(pool), dtype=torch.long)))


def _measure(model: nn.Module, sets: _Validation) -> dict[str, Any]:
    """Clean and degraded validation accuracy, and the share of validation non-digits rejected
    at the threshold that rejects 0.5% of validation digits (softmax max probability, T = 1)."""
    val_logits = predict(model, sets.clean)
    degraded = {variant: _accuracy(model, digits) for variant, digits in sets.degraded.items()}
    val_accuracy = float((val_logits.argmax(1) == sets.clean.labels).double().mean())
    threshold = fit_threshold(digit_score(torch.softmax(val_logits, 1).numpy()))
    nondigit_scores = digit_score(torch.softmax(predict(model, sets.nondigits), 1).numpy())
    return {
        "val_loss": float(F.cross_entropy(val_logits, sets.clean.labels)),
        "val_accuracy": val_accuracy,
        "val_degraded_accuracy": degraded,
        "val_mixed_accuracy": (val_accuracy + sum(degraded.values()) / len(degraded)) / 2,
        "val_nondigits_rejected": rejected_fraction(nondigit_scores, threshold),
    }


def _selection_key(recipe: Recipe, row: dict[str, Any]) -> tuple[float, float, float]:
    """Larger is better. ``val_accuracy``: clean validation accuracy, ties broken by the lower loss.
    ``mixed``: the mean of clean and degraded validation accuracy, only among epochs whose clean
    validation accuracy reaches ``selection_min_val_accuracy`` (the others rank below all of them)."""
    if recipe.selection == "val_accuracy":
        return (1.0, row["val_accuracy"], -row["val_loss"])
    if recipe.selection == "mixed":
        eligible = row["val_accuracy"] >= recipe.selection_min_val_accuracy - 1e-9
        return (float(eligible), row["val_mixed_accuracy"], -row["val_loss"])
    raise ValueError(f"unknown selection rule {recipe.selection!r}")


def _transform(recipe: Recipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """The affine/elastic distortion, then the degradations that have a probability."""
    geometric = augmentation(
        recipe.aug_degrees,
        recipe.aug_translate,
        recipe.aug_scale,
        recipe.aug_shear,
        recipe.aug_elastic_p,
        recipe.aug_elastic_alpha,
        recipe.aug_elastic_sigma,
    )
    degradations = Degradations(
        stroke_p=recipe.aug_stroke_p,
        lowres_p=recipe.aug_lowres_p,
        lowres_sizes=recipe.aug_lowres_sizes,
        binarise_p=recipe.aug_binarise_p,
        contrast_p=recipe.aug_contrast_p,
        noise_p=recipe.aug_noise_p,
        thumbnail_p=recipe.aug_thumbnail_p,
    )
    return v2.Compose([geometric, degradations]) if degradations.active else geometric


def _outliers_per_batch(recipe: Recipe) -> int:
    return round(recipe.batch_size * recipe.outlier_fraction) if recipe.outlier_weight > 0 else 0


def _fit_one(
    recipe: Recipe, train: Digits, val: Digits, workers: int, teacher: nn.Module | None, init: dict[str, torch.Tensor] | None = None
) -> tuple[nn.Module, list[dict[str, Any]], int]:
    """Train with augmentation, keeping the EMA weights of the best epoch by ``recipe.selection``."""
    torch.manual_seed(recipe.seed)
    net = build(recipe.arch).to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    if init is not None:
        net.load_state_dict(init)
        # Scaling the last layer scales the logits and keeps every prediction. The Inception
        # net, trained without label smoothing, has logits so large that the uniform-target
        # loss of outlier exposure starts at 3.5x its minimum (README, Training: runs 14, 15).
        last = net.fc
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(recipe.init_logit_scale)
            last.bias.mul_(recipe.init_logit_scale)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay))
    generator = torch.Generator().manual_seed(recipe.seed)

    def loader_for(transform: Callable[[torch.Tensor], torch.Tensor] | None) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        return DataLoader(
            AugmentedDigits(train, transform),
            batch_size=recipe.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=generator,
        )

    augmented, clean = loader_for(_transform(recipe)), loader_for(None)
    n_outliers = _outliers_per_batch(recipe)
    non_digits = _non_digit_images([dataclasses.asdict(recipe)])
    sets = _validation_sets(val, non_digits) if n_outliers or recipe.selection != "val_accuracy" else None
    optimiser = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=len(augmented), pct_start=recipe.pct_start
    )
    history: list[dict[str, Any]] = []
    best_key, best_state, best_epoch = (-1.0, -1.0, 0.0), copy.deepcopy(ema.module.state_dict()), 0
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        seen = correct = 0
        loss_sum = 0.0
        # A fresh pool of non-digits each epoch (seed outlier_seed + epoch, training digits only).
        pool = torch.from_numpy(nondigit_pool(n_outliers * len(augmented), recipe.outlier_seed + epoch, train.images.numpy()))
        # The last epochs see the images as they are: augmentation regularises, but a net this
        # small also pays for fitting distortions that real digits rarely show.
        loader = clean if epoch > recipe.epochs - recipe.clean_epochs else augmented
        bar = tqdm(loader, desc=f"{recipe.arch} {epoch}/{recipe.epochs}", leave=False, dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            outliers = pool[step * n_outliers : (step + 1) * n_outliers]
            inputs = normalise(torch.cat([images.squeeze(1), outliers])).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():  # not inference_mode: the loss saves these for backward
                teacher_probs = teacher(inputs[: len(labels)]) if teacher is not None else None
            all_logits = net(inputs)
            logits = all_logits[: len(labels)]
            loss = _loss(recipe, logits, labels, teacher_probs)
            if n_outliers:
                loss = loss + recipe.outlier_weight * outlier_loss(all_logits[len(labels) :])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            optimiser.step()
            schedule.step()
            ema.update_parameters(net)
            seen += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += loss.item() * len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        if sets is not None:
            measured = _measure(ema.module, sets)
        else:
            val_loss, val_accuracy = _epoch_loss_accuracy(ema.module, val)
            measured = {"val_loss": val_loss, "val_accuracy": val_accuracy}
        row = {"epoch": epoch, "lr": schedule.get_last_lr()[0], "train_loss": loss_sum / seen, "train_accuracy": correct / seen, **measured}
        history.append(row)
        # Ties on 5,000 images are common: the lower validation loss breaks them.
        key = _selection_key(recipe, row)
        if key > best_key:
            best_key, best_state, best_epoch = key, copy.deepcopy(ema.module.state_dict()), epoch
        extra = (
            f" | mixed {100 * row['val_mixed_accuracy']:.2f}% non-digits rejected {100 * row['val_nondigits_rejected']:.1f}%"
            if sets is not None
            else ""
        )
        tqdm.write(
            f"{recipe.arch} epoch {epoch:3d}: train loss {loss_sum / seen:.4f} acc {100 * correct / seen:.2f}% | "
            f"val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:.2f}%{extra}{' *' if best_epoch == epoch else ''}",
            file=sys.stdout,
        )
        sys.stdout.flush()
    best = build(recipe.arch)
    best.load_state_dict({k: v.contiguous() for k, v in best_state.items()})
    return best.eval(), history, best_epoch


NON_DIGITS = 5000  # per pool: validation (seed VALIDATION_SEED) and evaluation (seed EVALUATION_SEED)
SMOKE_NON_DIGITS = 500  # the same pools, cut short, for runs on a --train-limit subset


def _non_digit_images(recipes: list[dict[str, Any]]) -> int:
    """Smoke runs (a --train-limit subset) measure on fewer non-digits; real runs on NON_DIGITS."""
    return SMOKE_NON_DIGITS if any(recipe.get("train_limit") for recipe in recipes) else NON_DIGITS


IS_DIGIT_METHOD = (
    "the largest threshold on the digit score that rejects at most 0.5% of the 5,000 validation digits; the score "
    "(max probability or 1 - normalised entropy of the calibrated probabilities softened by a temperature of "
    "1, 1.5, 2 or 3) is the pair that rejects the most validation non-digits (models.nondigits, seed 1000000) "
    "at its threshold"
)


def is_digit_report(model: nn.Module, val: Digits, test: Digits, non_digits: int = NON_DIGITS) -> dict[str, Any]:
    """Fit the is_digit threshold of a calibrated model on validation data; report test rates.

    Everything that is chosen (score and threshold) is chosen on the validation digits and the
    validation non-digit pool; the test digits and the evaluation-seed pool are only measured.
    """
    pools = {
        "val": nondigit_pool(non_digits, VALIDATION_SEED, val.images.numpy()),
        "test": nondigit_pool(non_digits, EVALUATION_SEED, test.images.numpy()),
    }
    probs = {
        "val": (predict(model, val).numpy(), predict(model, _unlabelled(pools["val"])).numpy()),
        "test": (predict(model, test).numpy(), predict(model, _unlabelled(pools["test"])).numpy()),
    }
    val_digits, val_nondigits = probs["val"]
    candidates = list(itertools.product(SCORES, TEMPERATURES))
    fitted = {(score, t): fit_threshold(digit_score(val_digits, score, t)) for score, t in candidates}
    rejected = {(score, t): rejected_fraction(digit_score(val_nondigits, score, t), fitted[score, t]) for score, t in candidates}
    # Ties go to the smaller temperature, then to the max probability: the plainer score.
    score, temperature = max(candidates, key=lambda c: (rejected[c], -c[1], c[0] == "max_probability"))
    threshold = fitted[score, temperature]

    def rates(split: str) -> dict[str, float]:
        digits, nondigits = probs[split]
        return {
            "digits_rejected": rejected_fraction(digit_score(digits, score, temperature), threshold),
            "non_digits_rejected": rejected_fraction(digit_score(nondigits, score, temperature), threshold),
        }

    return {
        "method": IS_DIGIT_METHOD,
        "preprocessing_version": PREPROCESSING_VERSION,
        "score": score,
        "temperature": temperature,
        "threshold": threshold,
        "validation": {**rates("val"), "non_digit_images": len(pools["val"]), "digit_images": len(val)},
        "validation_non_digits_rejected_by_candidate": {f"{name} at temperature {t:g}": rate for (name, t), rate in rejected.items()},
        "test": {**rates("test"), "non_digit_images": len(pools["test"]), "digit_images": len(test), "non_digit_seed": EVALUATION_SEED},
    }


def _unlabelled(images: Any) -> Digits:
    return Digits(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long))


def _calibration_report(
    val_scores: torch.Tensor, test_scores: torch.Tensor, val: Digits, test: Digits, *, from_probs: bool
) -> dict[str, Any]:
    """Fit a temperature on validation scores (logits, or probabilities for the ensemble)."""
    to_logits = (lambda p: torch.log(p.clamp_min(1e-12))) if from_probs else (lambda s: s)
    temperature = fit_temperature(to_logits(val_scores), val.labels)
    test_before = torch.softmax(to_logits(test_scores), dim=1)
    test_after = torch.softmax(to_logits(test_scores) / temperature, dim=1)
    return {
        "method": "temperature scaling fitted on the validation split (NLL, L-BFGS)",
        "temperature": temperature,
        "ece_bins": 15,
        "val_ece_after": expected_calibration_error(torch.softmax(to_logits(val_scores) / temperature, 1), val.labels),
        "test_ece_before": expected_calibration_error(test_before, test.labels),
        "test_ece_after": expected_calibration_error(test_after, test.labels),
    }


def _metrics_block(report: dict[str, Any], val_accuracy: float) -> dict[str, Any]:
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": report["accuracy"],
        "test_errors": report["errors"],
        "per_class_test_accuracy": report["per_class_accuracy"],
        "confusion_matrix": report["confusion_matrix"],
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _load_init(recipe: Recipe, init: Path | None) -> dict[str, torch.Tensor] | None:
    """The state_dict to fine-tune from; it must be the exact file the recipe names by sha256."""
    if recipe.init_sha256 is None:
        if init is not None:
            raise SystemExit("--init given, but the recipe has no init_sha256 (main() sets it from the file)")
        return None
    if init is None:
        raise SystemExit(
            f"this {recipe.arch} recipe fine-tunes from the checkpoint with sha256 {recipe.init_sha256}; pass it as --init FILE "
            "(the README's Training section says which commit holds it)"
        )
    actual = sha256_file(init)
    if actual != recipe.init_sha256:
        raise SystemExit(f"--init {init} has sha256 {actual}, but the recipe fine-tunes from {recipe.init_sha256}")
    state: dict[str, torch.Tensor] = torch.load(init, map_location="cpu", weights_only=True)
    return state


def train(
    recipe: Recipe,
    data_dir: Path,
    download: bool,
    out: Path,
    workers: int,
    teacher_dir: Path = Path("weights"),
    init: Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, calibrate, evaluate and write one architecture; returns its metadata."""
    started = time.perf_counter()
    init_state = _load_init(recipe, init)
    teacher, teacher_meta = load_classifier(teacher_dir, recipe.teacher) if recipe.teacher else (None, {})
    full_train, val = split_validation(load_mnist(data_dir, train=True, download=download), recipe.val_size, recipe.split_seed)
    train_digits = full_train.subset(torch.arange(recipe.train_limit)) if recipe.train_limit else full_train
    test = load_mnist(data_dir, train=False, download=download)

    net, history, best_epoch = _fit_one(recipe, train_digits, val, workers, teacher, init_state)
    val_logits, test_logits = predict(net, val), predict(net, test)
    calibration = _calibration_report(val_logits, test_logits, val, test, from_probs=False)
    report = classification_report(torch.softmax(test_logits / calibration["temperature"], 1), test.labels)

    out.mkdir(parents=True, exist_ok=True)
    pt_path = weights_path(out, recipe.arch)
    torch.save(net.state_dict(), pt_path)
    metadata: dict[str, Any] = {
        "name": recipe.arch,
        "architecture": ARCHITECTURES[recipe.arch].description,
        "parameters": count_parameters(net),
        "macs_per_image": count_macs(net),
        "input_shape": [1, 28, 28],
        "file": pt_path.name,
        "file_size_bytes": pt_path.stat().st_size,
        "sha256": sha256_file(pt_path),
        "metrics": _metrics_block(report, history[best_epoch - 1]["val_accuracy"]),
        "calibration": calibration,
        "best_epoch": best_epoch,
        "recipe": dataclasses.asdict(recipe),
        "teacher": {"name": recipe.teacher, "sha256": teacher_meta["sha256"]} if teacher else None,
        "data": {"train_images": len(train_digits), "val_images": len(val), "test_images": len(test)},
        "training_wall_time_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "environment": _environment(),
        "command": command,
        "is_digit": is_digit_report(
            CalibratedClassifier(net, calibration["temperature"]).eval(), val, test, _non_digit_images([dataclasses.asdict(recipe)])
        ),
        "history": history,
    }
    _write_json(metadata_path(out, recipe.arch), metadata)
    plot_learning_curves(history, out / f"{recipe.arch}-curves.png", f"{recipe.arch}: best epoch {best_epoch}")
    plot_confusion(report["confusion_matrix"], out / f"{recipe.arch}-confusion.png", f"{recipe.arch}: test confusion")
    print(
        f"{recipe.arch}: best epoch {best_epoch}, val {100 * metadata['metrics']['val_accuracy']:.2f}%, "
        f"test {100 * report['accuracy']:.2f}%, T={calibration['temperature']:.3f}, "
        f"test ECE {100 * calibration['test_ece_before']:.3f}% -> {100 * calibration['test_ece_after']:.3f}%, "
        f"{metadata['training_wall_time_seconds']:.0f} s"
    )

    if all(weights_path(out, name).exists() for name in ARCHITECTURES):
        calibrate_ensemble(out, data_dir, download)
    return metadata


def calibrate_ensemble(out: Path, data_dir: Path, download: bool) -> None:
    """Fit the ensemble's temperature on the members' shared validation split; write its metadata."""
    members = {name: load_classifier(out, name) for name in ARCHITECTURES}
    splits = {(meta["recipe"]["split_seed"], meta["recipe"]["val_size"]) for _, meta in members.values()}
    if len(splits) != 1:
        raise SystemExit(f"ensemble not calibrated: the members used different validation splits {sorted(splits)}")
    ((split_seed, val_size),) = splits
    _, val = split_validation(load_mnist(data_dir, train=True, download=download), val_size, split_seed)
    test = load_mnist(data_dir, train=False, download=download)
    raw = Ensemble([model for model, _ in members.values()])
    val_probs, test_probs = predict(raw.mean_probabilities, val), predict(raw.mean_probabilities, test)
    calibration = _calibration_report(val_probs, test_probs, val, test, from_probs=True)
    calibrated = Ensemble([model for model, _ in members.values()], calibration["temperature"])
    report = classification_report(predict(calibrated, test), test.labels)
    val_accuracy = float((val_probs.argmax(1) == val.labels).double().mean())
    is_digit = is_digit_report(calibrated.eval(), val, test, _non_digit_images([meta["recipe"] for _, meta in members.values()]))
    _write_json(
        metadata_path(out, ENSEMBLE),
        {
            "name": ENSEMBLE,
            "architecture": "Ensemble: mean of the calibrated softmax outputs of " + " and ".join(members),
            "members": {name: meta["sha256"] for name, (_, meta) in members.items()},
            "parameters": sum(meta["parameters"] for _, meta in members.values()),
            "macs_per_image": sum(meta["macs_per_image"] for _, meta in members.values()),
            "input_shape": [1, 28, 28],
            "metrics": _metrics_block(report, val_accuracy),
            "calibration": calibration,
            "is_digit": is_digit,
            "environment": _environment(),
        },
    )
    plot_confusion(report["confusion_matrix"], out / f"{ENSEMBLE}-confusion.png", "ensemble: test confusion")
    print(
        f"ensemble: test {100 * report['accuracy']:.2f}%, T={calibration['temperature']:.3f}, "
        f"test ECE {100 * calibration['test_ece_before']:.3f}% -> {100 * calibration['test_ece_after']:.3f}%"
    )


def refit_is_digit(out: Path, name: str, data_dir: Path, download: bool) -> None:
    """Rewrite only the is_digit block of ``<out>/<name>.json`` for the checkpoints already there."""
    meta = read_metadata(out, name)
    split = (meta["recipe"]["val_size"], meta["recipe"]["split_seed"]) if "recipe" in meta else (5000, 2024)
    _, val = split_validation(load_mnist(data_dir, train=True, download=download), *split)
    test = load_mnist(data_dir, train=False, download=download)
    model: nn.Module
    if name == ENSEMBLE:
        members = {arch: load_classifier(out, arch) for arch in ARCHITECTURES}
        model, _ = load_ensemble(out, {n: m for n, (m, _) in members.items()}, {n: m["sha256"] for n, (_, m) in members.items()})
    else:
        model, _ = load_classifier(out, name)
    meta["is_digit"] = is_digit_report(model, val, test)
    _write_json(metadata_path(out, name), meta)
    print(f"{name}: is_digit {json.dumps(meta['is_digit'])}")


# Flag -> Recipe field; a flag left out keeps the architecture's default recipe.
RECIPE_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "label_smoothing": "label_smoothing",
    "degrees": "aug_degrees",
    "shear": "aug_shear",
    "scale": "aug_scale",
    "elastic_p": "aug_elastic_p",
    "clean_epochs": "clean_epochs",
    "seed": "seed",
    "split_seed": "split_seed",
    "val_size": "val_size",
    "train_limit": "train_limit",
    "grad_clip": "grad_clip",
    "teacher": "teacher",
    "distill_weight": "distill_weight",
    "distill_temperature": "distill_temperature",
    "stroke_p": "aug_stroke_p",
    "lowres_p": "aug_lowres_p",
    "lowres_sizes": "aug_lowres_sizes",
    "binarise_p": "aug_binarise_p",
    "contrast_p": "aug_contrast_p",
    "noise_p": "aug_noise_p",
    "thumbnail_p": "aug_thumbnail_p",
    "outlier_fraction": "outlier_fraction",
    "outlier_weight": "outlier_weight",
    "outlier_seed": "outlier_seed",
    "init_logit_scale": "init_logit_scale",
    "selection": "selection",
    "selection_min_val_accuracy": "selection_min_val_accuracy",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        choices=[*ARCHITECTURES, ENSEMBLE],
        required=True,
        help="ensemble: only (re)calibrate the ensemble of the checkpoints already in --out",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--degrees", type=float, help="random rotation range (+-)")
    parser.add_argument("--shear", type=float, help="random shear range (+-, degrees)")
    parser.add_argument("--scale", type=float, nargs=2, help="random zoom range")
    parser.add_argument("--elastic-p", type=float, help="probability of an elastic distortion")
    parser.add_argument("--clean-epochs", type=int, help="train the last N epochs without augmentation")
    parser.add_argument("--seed", type=int, help="initialisation, shuffling and augmentation")
    parser.add_argument("--split-seed", type=int, help="which images are validation")
    parser.add_argument("--val-size", type=int)
    parser.add_argument("--train-limit", type=int, help="train on the first N images only (smoke runs)")
    parser.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    parser.add_argument("--teacher", choices=list(ARCHITECTURES), help="distil from this committed model")
    parser.add_argument("--teacher-dir", type=Path, default=Path("weights"), help="where the teacher's checkpoint is")
    parser.add_argument("--distill-weight", type=float, help="share of the distillation term in the loss (0-1)")
    parser.add_argument("--distill-temperature", type=float, help="softening of teacher and student outputs")
    parser.add_argument("--stroke-p", type=float, help="probability of a thicker or thinner stroke (2x2/3x3 max/min filter)")
    parser.add_argument("--lowres-p", type=float, help="probability of a downsample-upsample round trip")
    parser.add_argument("--lowres-sizes", type=int, nargs=2, help="range of the downsampled side (pixels)")
    parser.add_argument("--binarise-p", type=float, help="probability of a random 1-bit threshold")
    parser.add_argument("--contrast-p", type=float, help="probability of a fainter ink peak and a lifted background")
    parser.add_argument("--noise-p", type=float, help="probability of Gaussian background noise")
    parser.add_argument("--thumbnail-p", type=float, help="probability of a 6-16 px thumbnail (half 1-bit), as served")
    parser.add_argument("--outlier-fraction", type=float, help="non-digits per batch, as a fraction of the batch size")
    parser.add_argument("--outlier-weight", type=float, help="weight of the uniform-target loss on non-digits")
    parser.add_argument("--outlier-seed", type=int, help="epoch e's non-digit pool has seed outlier_seed + e")
    parser.add_argument("--selection", choices=["val_accuracy", "mixed"], help="which epoch to keep (see _selection_key)")
    parser.add_argument("--selection-min-val-accuracy", type=float, help="mixed: the clean validation accuracy an epoch needs")
    parser.add_argument("--init-logit-scale", type=float, help="multiply the --init checkpoint's last layer (its logits) by this")
    parser.add_argument("--init", type=Path, help="fine-tune from this state_dict (its sha256 goes into the recipe)")
    parser.add_argument(
        "--from-scratch", action="store_true", help="ignore the recipe's init_sha256 and start from a fresh initialisation (smoke runs)"
    )
    parser.add_argument("--fit-is-digit", action="store_true", help="only refit the is_digit block of <out>/<arch>.json")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--no-download", dest="download", action="store_false", help="read a local copy only")
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes for augmentation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_is_digit:
        refit_is_digit(args.out, args.arch, args.data_dir, args.download)
        return 0
    if args.arch == ENSEMBLE:
        calibrate_ensemble(args.out, args.data_dir, args.download)
        return 0
    given = {field: getattr(args, flag) for flag, field in RECIPE_FLAGS.items() if getattr(args, flag) is not None}
    for field in ("aug_scale", "aug_lowres_sizes"):
        if field in given:
            given[field] = tuple(given[field])
    if args.init is not None and args.from_scratch:
        parser.error("--init and --from-scratch exclude each other")
    if args.init is not None:
        given["init_sha256"] = sha256_file(args.init)
    if args.from_scratch:
        given["init_sha256"] = None
    recipe = dataclasses.replace(DEFAULT_RECIPES[args.arch], **given)
    command = shlex.join(["python", "-m", "models.train", *(sys.argv[1:] if argv is None else argv)])
    train(recipe, args.data_dir, args.download, args.out, args.workers, args.teacher_dir, args.init, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
