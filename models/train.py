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
"""

import argparse
import copy
import dataclasses
import json
import sys
import time
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

from models.calibration import Ensemble, expected_calibration_error, fit_temperature
from models.checkpoint import load_classifier, metadata_path, sha256_file, weights_path
from models.complexity import count_macs, count_parameters
from models.data import AugmentedDigits, Digits, augmentation, load_mnist, normalise, split_validation
from models.evaluate import classification_report, predict
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
    "resnet": Recipe("resnet", epochs=60),
}


def _epoch_loss_accuracy(model: nn.Module, digits: Digits) -> tuple[float, float]:
    logits = predict(model, digits)
    return float(F.cross_entropy(logits, digits.labels)), float((logits.argmax(1) == digits.labels).double().mean())


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


def _fit_one(
    recipe: Recipe, train: Digits, val: Digits, workers: int, teacher: nn.Module | None
) -> tuple[nn.Module, list[dict[str, Any]], int]:
    """Train with augmentation, keeping the EMA weights of the best validation epoch."""
    torch.manual_seed(recipe.seed)
    net = build(recipe.arch).to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay))
    transform = augmentation(
        recipe.aug_degrees,
        recipe.aug_translate,
        recipe.aug_scale,
        recipe.aug_shear,
        recipe.aug_elastic_p,
        recipe.aug_elastic_alpha,
        recipe.aug_elastic_sigma,
    )
    generator = torch.Generator().manual_seed(recipe.seed)

    def loader_for(transform: v2.Transform | None) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        return DataLoader(
            AugmentedDigits(train, transform),
            batch_size=recipe.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=generator,
        )

    augmented, clean = loader_for(transform), loader_for(None)
    optimiser = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=len(augmented), pct_start=recipe.pct_start
    )
    history: list[dict[str, Any]] = []
    best_key, best_state, best_epoch = (-1.0, 0.0), copy.deepcopy(ema.module.state_dict()), 0
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        seen = correct = 0
        loss_sum = 0.0
        # The last epochs see the images as they are: augmentation regularises, but a net this
        # small also pays for fitting distortions that real digits rarely show.
        loader = clean if epoch > recipe.epochs - recipe.clean_epochs else augmented
        bar = tqdm(loader, desc=f"{recipe.arch} {epoch}/{recipe.epochs}", leave=False, dynamic_ncols=True)
        for images, labels in bar:
            inputs = normalise(images).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():  # not inference_mode: the loss saves these for backward
                teacher_probs = teacher(inputs) if teacher is not None else None
            logits = net(inputs)
            loss = _loss(recipe, logits, labels, teacher_probs)
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
        val_loss, val_accuracy = _epoch_loss_accuracy(ema.module, val)
        history.append(
            {
                "epoch": epoch,
                "lr": schedule.get_last_lr()[0],
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
        )
        # Ties on 5,000 images are common: the lower validation loss breaks them.
        if (val_accuracy, -val_loss) > best_key:
            best_key, best_state, best_epoch = (val_accuracy, -val_loss), copy.deepcopy(ema.module.state_dict()), epoch
        tqdm.write(
            f"{recipe.arch} epoch {epoch:3d}: train loss {loss_sum / seen:.4f} acc {100 * correct / seen:.2f}% | "
            f"val loss {val_loss:.4f} acc {100 * val_accuracy:.2f}%{' *' if best_epoch == epoch else ''}"
        )
    best = build(recipe.arch)
    best.load_state_dict({k: v.contiguous() for k, v in best_state.items()})
    return best.eval(), history, best_epoch


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


def train(recipe: Recipe, data_dir: Path, download: bool, out: Path, workers: int, teacher_dir: Path = Path("weights")) -> dict[str, Any]:
    """Train, calibrate, evaluate and write one architecture; returns its metadata."""
    started = time.perf_counter()
    teacher, teacher_meta = load_classifier(teacher_dir, recipe.teacher) if recipe.teacher else (None, {})
    full_train, val = split_validation(load_mnist(data_dir, train=True, download=download), recipe.val_size, recipe.split_seed)
    train_digits = full_train.subset(torch.arange(recipe.train_limit)) if recipe.train_limit else full_train
    test = load_mnist(data_dir, train=False, download=download)

    net, history, best_epoch = _fit_one(recipe, train_digits, val, workers, teacher)
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
            "environment": _environment(),
        },
    )
    plot_confusion(report["confusion_matrix"], out / f"{ENSEMBLE}-confusion.png", "ensemble: test confusion")
    print(
        f"ensemble: test {100 * report['accuracy']:.2f}%, T={calibration['temperature']:.3f}, "
        f"test ECE {100 * calibration['test_ece_before']:.3f}% -> {100 * calibration['test_ece_after']:.3f}%"
    )


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
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--no-download", dest="download", action="store_false", help="read a local copy only")
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes for augmentation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch == ENSEMBLE:
        calibrate_ensemble(args.out, args.data_dir, args.download)
        return 0
    given = {field: getattr(args, flag) for flag, field in RECIPE_FLAGS.items() if getattr(args, flag) is not None}
    if "aug_scale" in given:
        given["aug_scale"] = tuple(given["aug_scale"])
    recipe = dataclasses.replace(DEFAULT_RECIPES[args.arch], **given)
    train(recipe, args.data_dir, args.download, args.out, args.workers, args.teacher_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
