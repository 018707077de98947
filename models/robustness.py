"""Robustness of a weights directory on the VALIDATION split: degraded and synthesised digits, non-digits.

    python -m models.robustness --weights-dir weights --data-dir ../shared/data --no-download

For each served model: accuracy on the 5,000 validation digits as they are, scanned at 8x8
and at 16x16 and scaled back up, and thresholded to 1-bit (``models.augment.degrade_validation``),
on the 2,500 digits the training runs validate on from the stroke synthesiser (``models.strokes``,
every style, seed 1,000,000), on the same synthesised digits as 8x8 grey thumbnails as served
(``synthesised_8x8``: the box fitted to 8x8, as UCI's digits are stored), and the share of
the validation non-digit pool (``models.nondigits``, seed 1,000,000) that the model's own
is_digit threshold rejects, or, for weights without one, the share whose max probability is
below the threshold that rejects 0.5% of the validation digits. Nothing here
reads the test set, so it may be used to compare checkpoints.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.digit_rule import digit_score, fit_threshold, rejected_fraction
from models.augment import ROBUSTNESS_VARIANTS, as_thumbnail, degrade_validation
from models.checkpoint import load_classifier, load_ensemble
from models.data import Digits, load_mnist, split_validation
from models.evaluate import predict
from models.nondigits import VALIDATION_SEED, nondigit_pool
from models.registry import ARCHITECTURES, ENSEMBLE
from models.strokes import drawn_digits
from models.training.recipe import Data, Recipe

__all__ = ["main", "measure", "thumbnails_8x8"]


def _accuracy(model: nn.Module, digits: Digits) -> float:
    return float((predict(model, digits).argmax(1) == digits.labels).double().mean())


def thumbnails_8x8(digits: Digits) -> Digits:
    """Each digit's box fitted to 8x8 grey, as served (UCI's digits are stored so)."""
    return Digits(torch.stack([as_thumbnail(image, 8, 1.0, None, dark_on_light=False)[0] for image in digits.images]), digits.labels)


def measure(model: nn.Module, val: Digits, drawn: Digits, nondigits: Digits, is_digit: dict[str, Any] | None) -> dict[str, float]:
    """Clean, degraded and synthesised validation accuracy, non-digits rejected, validation digits rejected."""
    result = {"clean": _accuracy(model, val)}
    result |= {variant: _accuracy(model, Digits(degrade_validation(val.images, variant), val.labels)) for variant in ROBUSTNESS_VARIANTS}
    result["degraded_mean"] = sum(result[variant] for variant in ROBUSTNESS_VARIANTS) / len(ROBUSTNESS_VARIANTS)
    result["synthesised"] = _accuracy(model, drawn)
    result["synthesised_8x8"] = _accuracy(model, thumbnails_8x8(drawn))
    # Weights fitted before the score had a temperature scored at 1: they still measure as they served.
    score, temperature = (is_digit["score"], float(is_digit.get("temperature", 1.0))) if is_digit else ("max_probability", 1.0)
    digit_scores = digit_score(predict(model, val).numpy(), score, temperature)
    threshold = float(is_digit["threshold"]) if is_digit else fit_threshold(digit_scores)
    result["digits_rejected"] = rejected_fraction(digit_scores, threshold)
    result["non_digits_rejected"] = rejected_fraction(digit_score(predict(model, nondigits).numpy(), score, temperature), threshold)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--no-download", dest="download", action="store_false", help="read a local copy only")
    parser.add_argument("--non-digits", type=int, default=5000, help="size of the validation non-digit pool")
    args = parser.parse_args(argv)

    members = {name: load_classifier(args.weights_dir, name) for name in ARCHITECTURES}
    ensemble, ensemble_meta = load_ensemble(
        args.weights_dir, {n: m for n, (m, _) in members.items()}, {n: meta["sha256"] for n, (_, meta) in members.items()}
    )
    splits = {(data.val_size, data.split_seed) for data in (Recipe.from_json(meta["recipe"]).data for _, meta in members.values())}
    if len(splits) != 1:
        raise SystemExit(f"the members used different validation splits {sorted(splits)}")
    ((val_size, split_seed),) = splits
    _, val = split_validation(load_mnist(args.data_dir, train=True, download=args.download), val_size, split_seed)
    pool = torch.from_numpy(nondigit_pool(args.non_digits, VALIDATION_SEED, val.images.numpy()))
    nondigits = Digits(pool, torch.zeros(len(pool), dtype=torch.long))
    drawn = drawn_digits(Data().drawn_validation_digits, VALIDATION_SEED)
    models = [*((n, m, meta) for n, (m, meta) in members.items()), (ENSEMBLE, ensemble, ensemble_meta)]
    results = {name: measure(model, val, drawn, nondigits, meta.get("is_digit")) for name, model, meta in models}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
