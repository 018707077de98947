"""Fitting one network to a recipe, and choosing its epoch on the validation split.

The loop: AdamW under a one-cycle schedule on (label-smoothed) cross-entropy of augmented
digits (MNIST's, and with ``data.strokes_fraction`` a share of each batch synthesised from pen
strokes by ``models.strokes``, fresh for every step), plus, with outlier exposure, a uniform-target loss on synthetic non-digits; after each
epoch the moving average of the weights is measured on the validation split, and the epoch
that ranks highest by ``recipe.selection`` is kept. Nothing here reads the test set.
"""

import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from core.digit_rule import digit_score, fit_threshold, rejected_fraction
from models.augment import ROBUSTNESS_VARIANTS, degrade_validation
from models.checkpoint import sha256_file
from models.data import AugmentedBatches, AugmentedDigits, Digits, normalise
from models.evaluate import predict
from models.nondigits import VALIDATION_SEED, nondigit_pool
from models.registry import build
from models.strokes import StrokeDigits, drawn_digits
from models.training.recipe import Data, Init, Recipe, Selection

__all__ = ["Fitted", "accuracy", "fit", "load_init", "outlier_loss", "selection_key"]

Loader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Fitted:
    """The kept network (the moving average at the chosen epoch, in eval mode) and every epoch's figures."""

    net: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int


def load_init(init: Init, path: Path | None) -> dict[str, torch.Tensor] | None:
    """The state_dict to fine-tune from: the file at ``path``, only if its sha256 is the recipe's."""
    if init.sha256 is None:
        if path is not None:
            raise SystemExit(
                f"--init {path} given, but the recipe trains from a fresh initialisation; to fine-tune from this file "
                f"(a change of recipe), pass --init-sha256 {sha256_file(path)} as well"
            )
        return None
    if path is None:
        raise SystemExit(
            f"the recipe fine-tunes from the checkpoint with sha256 {init.sha256}: pass that file as --init FILE, "
            "or --init-sha256 none to train from a fresh initialisation"
        )
    actual = sha256_file(path)
    if actual != init.sha256:
        raise SystemExit(
            f"--init {path} has sha256 {actual}, but the recipe fine-tunes from {init.sha256}: pass that file, or, "
            f"to fine-tune from this one (a change of recipe), --init-sha256 {actual}"
        )
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], digits: Digits) -> float:
    return float((predict(model, digits).argmax(1) == digits.labels).double().mean())


def outlier_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of non-digit logits against the uniform distribution (outlier exposure).

    Hendrycks et al. 2019: mean over images of -1/C sum_c log softmax(z)_c, which is
    log C exactly when the output is uniform and grows as one class takes over, so it
    pushes the largest probability of a non-digit down to 1/C.
    """
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean()


def selection_key(selection: Selection, row: dict[str, Any]) -> tuple[float, float, float]:
    """Larger is better; ties on 5,000 images are common, and the lower validation loss breaks them.
    ``mixed`` ranks the epochs below ``min_val_accuracy`` (clean) below all the others."""
    if selection.rule == "val_accuracy":
        return (1.0, row["val_accuracy"], -row["val_loss"])
    if selection.rule == "mixed":
        eligible = row["val_accuracy"] >= selection.min_val_accuracy - 1e-9
        return (float(eligible), row["val_mixed_accuracy"], -row["val_loss"])
    raise ValueError(f"unknown selection rule {selection.rule!r}")


@dataclass(frozen=True)
class _Validation:
    """What each epoch is measured on beyond the clean split: its fixed degradations, digits drawn
    by the stroke synthesiser in every style, and non-digits."""

    degraded: dict[str, Digits]
    strokes: Digits
    nondigits: Digits


def _validation_sets(val: Digits, data: Data) -> _Validation:
    degraded = {variant: Digits(degrade_validation(val.images, variant), val.labels) for variant in ROBUSTNESS_VARIANTS}
    strokes = drawn_digits(data.drawn_validation_digits, VALIDATION_SEED)
    pool = torch.from_numpy(nondigit_pool(data.non_digits, VALIDATION_SEED, val.images.numpy()))
    return _Validation(degraded, strokes, Digits(pool, torch.zeros(len(pool), dtype=torch.long)))


def _measure(model: nn.Module, val: Digits, sets: _Validation | None) -> dict[str, Any]:
    """Validation loss and accuracy; with ``sets``, the degraded and the synthesised digits' accuracy,
    their "mixed" mean with the clean accuracy, and the share of the validation non-digits rejected at
    the threshold that rejects 0.5% of the validation digits (softmax max probability, T = 1)."""
    val_logits = predict(model, val)
    val_accuracy = float((val_logits.argmax(1) == val.labels).double().mean())
    measured: dict[str, Any] = {"val_loss": float(F.cross_entropy(val_logits, val.labels)), "val_accuracy": val_accuracy}
    if sets is None:
        return measured
    degraded = {variant: accuracy(model, digits) for variant, digits in sets.degraded.items()}
    strokes = accuracy(model, sets.strokes)
    threshold = fit_threshold(digit_score(torch.softmax(val_logits, 1).numpy()))
    nondigit_scores = digit_score(torch.softmax(predict(model, sets.nondigits), 1).numpy())
    return measured | {
        "val_degraded_accuracy": degraded,
        "val_strokes_accuracy": strokes,
        "val_mixed_accuracy": (val_accuracy + sum(degraded.values()) / len(degraded) + strokes) / 3,
        "val_nondigits_rejected": rejected_fraction(nondigit_scores, threshold),
    }


def _initial_net(recipe: Recipe, init: dict[str, torch.Tensor] | None) -> nn.Module:
    net = build(recipe.arch).to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    if init is not None:
        net.load_state_dict(init)
        # Scaling the last layer scales the logits and keeps every prediction: a net trained without
        # label smoothing has logits so large that the uniform-target loss starts far above its minimum.
        last = net.fc
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(recipe.init.logit_scale)
            last.bias.mul_(recipe.init.logit_scale)
    return net


def _loaders(recipe: Recipe, train: Digits, workers: int, batch_size: int) -> tuple[Loader, Loader]:
    """Augmented (the distortion, then the degradations that have a probability) and clean batches of MNIST."""
    generator = torch.Generator().manual_seed(recipe.optimisation.seed)
    distortion = recipe.augmentation
    degradations = recipe.degradations if recipe.degradations.active else None

    def loader(dataset: Dataset[tuple[torch.Tensor, torch.Tensor]], batched: bool = False) -> Loader:
        common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
        if batched:  # the dataset builds each batch from a list of indices
            sampler = BatchSampler(RandomSampler(range(len(train)), generator=generator), batch_size, drop_last=True)
            return DataLoader(dataset, sampler=sampler, batch_size=None, **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator, **common)

    if distortion.mode == "batched":
        augmented = loader(AugmentedBatches(train, distortion, degradations), batched=True)
    else:
        transform = v2.Compose([distortion.transform(), degradations]) if degradations else distortion.transform()
        augmented = loader(AugmentedDigits(train, transform))
    return augmented, loader(AugmentedDigits(train, None))


def _stroke_batches(recipe: Recipe, per_batch: int, steps: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``per_batch`` synthesised digits for each of the run's steps, never one twice: items 0, 1, ...
    of the pool seeded with the training seed. They carry their own distortions; the recipe's
    augmentation is MNIST's, and its degradations theirs too with ``data.strokes_degraded``."""
    if per_batch == 0:
        return iter(())
    degradations = recipe.degradations if recipe.data.strokes_degraded and recipe.degradations.active else None
    pool = StrokeDigits(per_batch * steps * recipe.schedule.epochs, recipe.optimisation.seed, transform=degradations)
    return iter(DataLoader(pool, batch_size=per_batch, num_workers=workers))


def fit(recipe: Recipe, train: Digits, val: Digits, workers: int, init: dict[str, torch.Tensor] | None = None) -> Fitted:
    """Train ``recipe.arch`` on ``train``, keeping the moving-average weights of the epoch ``recipe.selection`` ranks first."""
    torch.manual_seed(recipe.optimisation.seed)
    net = _initial_net(recipe, init)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(recipe.optimisation.ema_decay))
    batch_size = recipe.optimisation.batch_size
    try:
        n_strokes = recipe.data.strokes_per_batch(batch_size)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    augmented, clean = _loaders(recipe, train, workers, batch_size - n_strokes)
    strokes = _stroke_batches(recipe, n_strokes, len(augmented), workers)
    n_outliers = recipe.outliers.per_batch(batch_size)
    sets = _validation_sets(val, recipe.data) if n_outliers or recipe.selection.rule != "val_accuracy" else None
    epochs = recipe.schedule.epochs
    optimiser = torch.optim.AdamW(net.parameters(), lr=recipe.schedule.lr, weight_decay=recipe.optimisation.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.schedule.lr, epochs=epochs, steps_per_epoch=len(augmented), pct_start=recipe.schedule.pct_start
    )
    history: list[dict[str, Any]] = []
    best_key, best_state, best_epoch = (-1.0, -1.0, 0.0), copy.deepcopy(ema.module.state_dict()), 0
    for epoch in range(1, epochs + 1):
        net.train()
        seen = correct = 0
        loss_sum = 0.0
        # A fresh pool of non-digits each epoch (seed outliers.seed + epoch, pasting training digits only).
        pool = torch.from_numpy(nondigit_pool(n_outliers * len(augmented), recipe.outliers.seed + epoch, train.images.numpy()))
        # The last epochs see the images as they are: augmentation regularises, but a net this
        # small also pays for fitting distortions that real digits rarely show.
        loader = clean if epoch > epochs - recipe.schedule.clean_epochs else augmented
        bar = tqdm(loader, desc=f"{recipe.arch} {epoch}/{epochs}", leave=False, dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            digits = normalise(images)
            if n_strokes:
                drawn, drawn_labels = next(strokes)
                digits, labels = torch.cat([digits, normalise(drawn)]), torch.cat([labels, drawn_labels])
            outliers = normalise(pool[step * n_outliers : (step + 1) * n_outliers])
            all_logits = net(torch.cat([digits, outliers]).contiguous(memory_format=torch.channels_last))
            logits = all_logits[: len(labels)]
            loss = F.cross_entropy(logits, labels, label_smoothing=recipe.optimisation.label_smoothing)
            if n_outliers:
                loss = loss + recipe.outliers.weight * outlier_loss(all_logits[len(labels) :])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.optimisation.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), recipe.optimisation.grad_clip)
            optimiser.step()
            schedule.step()
            ema.update_parameters(net)
            seen += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += loss.item() * len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        row = {"epoch": epoch, "lr": schedule.get_last_lr()[0], "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        row |= _measure(ema.module, val, sets)
        history.append(row)
        key = selection_key(recipe.selection, row)
        if key > best_key:
            best_key, best_state, best_epoch = key, copy.deepcopy(ema.module.state_dict()), epoch
        _print_epoch(recipe.arch, row, best_epoch == epoch)
    best = build(recipe.arch)
    best.load_state_dict({k: v.contiguous() for k, v in best_state.items()})
    return Fitted(best.eval(), history, best_epoch)


def _print_epoch(arch: str, row: dict[str, Any], best: bool) -> None:
    extra = (
        f" | strokes {100 * row['val_strokes_accuracy']:.2f}% mixed {100 * row['val_mixed_accuracy']:.2f}%"
        f" non-digits rejected {100 * row['val_nondigits_rejected']:.1f}%"
        if "val_mixed_accuracy" in row
        else ""
    )
    tqdm.write(
        f"{arch} epoch {row['epoch']:3d}: train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.2f}% | "
        f"val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:.2f}%{extra}{' *' if best else ''}",
        file=sys.stdout,
    )
    sys.stdout.flush()
