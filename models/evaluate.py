"""Evaluate the committed weights on the official MNIST test set.

    python -m models.evaluate --data-dir ../shared/data

Prints accuracy, per-class accuracy and the confusion matrix for each model and the
ensemble. Exits 1 when a checkpoint does not match the sha256 in its metadata.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.calibration import expected_calibration_error
from models.checkpoint import CheckpointError, load_classifier, load_ensemble
from models.data import Digits, load_mnist, normalise
from models.registry import ARCHITECTURES, ENSEMBLE

__all__ = ["classification_report", "main", "predict"]


def predict(model: Callable[[torch.Tensor], torch.Tensor], digits: Digits, batch_size: int = 1000) -> torch.Tensor:
    """The outputs (logits or probabilities) of a model in eval mode for every image, in order."""
    with torch.inference_mode():
        return torch.cat([model(normalise(digits.images[i : i + batch_size])) for i in range(0, len(digits), batch_size)])


def classification_report(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    predicted = probabilities.argmax(dim=1)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(dim=1).clamp_min(1)).tolist()
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "errors": int((predicted != labels).sum()),
        "per_class_accuracy": {str(digit): round(acc, 6) for digit, acc in enumerate(per_class)},
        "confusion_matrix": confusion.tolist(),
        "ece": expected_calibration_error(probabilities, labels),
    }


def print_report(name: str, report: dict[str, Any]) -> None:
    print(f"\n{name}: accuracy {100 * report['accuracy']:.2f}% ({report['errors']} errors), ECE {100 * report['ece']:.3f}%")
    print("per class: " + "  ".join(f"{d}:{100 * a:.2f}%" for d, a in report["per_class_accuracy"].items()))
    print("confusion (rows true, columns predicted):")
    for digit, row in enumerate(report["confusion_matrix"]):
        print(f"  {digit} " + " ".join(f"{v:5d}" for v in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--no-download", dest="download", action="store_false", help="read a local copy only")
    args = parser.parse_args(argv)

    try:
        members = {name: load_classifier(args.weights_dir, name) for name in ARCHITECTURES}
        ensemble, _ = load_ensemble(
            args.weights_dir,
            {name: model for name, (model, _) in members.items()},
            {name: meta["sha256"] for name, (_, meta) in members.items()},
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    test = load_mnist(args.data_dir, train=False, download=args.download)
    for name, model in [*((n, m) for n, (m, _) in members.items()), (ENSEMBLE, ensemble)]:
        print_report(name, classification_report(predict(model, test), test.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
