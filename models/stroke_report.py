"""What the stroke synthesiser draws, and how the committed weights read it, per style.

``plot_samples`` draws a grid: a row of samples per style of ``models.stroke_glyphs``, and
a row per degradation (stretched to fill the box, marker). ``write_scores`` has the committed
networks and their ensemble read ``per_variant`` synthesised digits of each style (pool
``SCORE_SEED``, never drawn for training) and writes the accuracy per style and what the
ensemble misreads each style as: where MNIST-trained weights fail on writing other than
MNIST's.
"""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_classifier, load_ensemble
from models.data import normalise
from models.registry import ARCHITECTURES, ENSEMBLE
from models.stroke_glyphs import VARIANTS, Variant
from models.strokes import render

__all__ = ["DEGRADATIONS", "SAMPLES_SEED", "SCORE_SEED", "degraded_pool", "plot_samples", "variant_pool", "write_scores"]

SCORE_SEED = 2_000_000  # the scored pools; training draws from the recipe's seed (small integers)
SAMPLES_SEED = 3_000_000
DEGRADATIONS = ("stretched", "marker")
SAMPLE_COLUMNS = 12
STYLE_STRIDE = 8  # coprime with the number of styles


def variant_pool(variant: int, count: int, seed: int = SCORE_SEED) -> np.ndarray:
    """``count`` drawings of ``VARIANTS[variant]`` with neither degradation: N x 28 x 28 float32."""
    return np.stack([render(VARIANTS[variant], np.random.default_rng((seed, variant, i))) for i in range(count)])


def degraded_pool(degradation: str, count: int, seed: int = SCORE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``count`` drawings with one degradation, the styles taken in turn (every STYLE_STRIDE-th, so that
    neighbours differ in class; every style equally often over a multiple of their number): images and labels."""
    stream = len(VARIANTS) + DEGRADATIONS.index(degradation)
    styles: list[Variant] = [VARIANTS[(STYLE_STRIDE * i) % len(VARIANTS)] for i in range(count)]
    options = {"stretched": degradation == "stretched", "marker": degradation == "marker"}
    images = [render(style, np.random.default_rng((seed, stream, i)), **options) for i, style in enumerate(styles)]
    return np.stack(images), np.array([style.label for style in styles])


def plot_samples(path: Path, columns: int = SAMPLE_COLUMNS) -> None:
    """A row of ``columns`` samples per style, then per degradation, as the networks see them (28 x 28)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [variant_pool(v, columns, SAMPLES_SEED) for v in range(len(VARIANTS))]
    rows += [degraded_pool(name, columns, SAMPLES_SEED)[0] for name in DEGRADATIONS]
    names = [variant.name + (" *" if variant.european else "") for variant in VARIANTS] + [f"any, {name}" for name in DEGRADATIONS]
    cells = [np.pad(image, 1, constant_values=0.35) for row in rows for image in row]
    grid = np.vstack([np.hstack(cells[r * columns : (r + 1) * columns]) for r in range(len(rows))])
    fig, ax = plt.subplots(figsize=(1.6 + 0.5 * columns, 0.5 * len(rows) + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([30 * r + 15 for r in range(len(rows))], names, fontsize=8)
    ax.set_xticks([])
    ax.set_title("models.strokes: each style (* rare in MNIST), then the degradations, framed as MNIST", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _readers(weights_dir: Path) -> tuple[dict[str, torch.nn.Module], dict[str, str | None]]:
    members = {name: load_classifier(weights_dir, name) for name in ARCHITECTURES}
    sha256 = {name: meta["sha256"] for name, (_, meta) in members.items()}
    ensemble, _ = load_ensemble(weights_dir, {name: model for name, (model, _) in members.items()}, sha256)
    return {**{name: model for name, (model, _) in members.items()}, ENSEMBLE: ensemble}, {**sha256, ENSEMBLE: None}


def _read(models: dict[str, torch.nn.Module], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's predicted label per image; inputs normalised as the service normalises them."""
    batch = normalise(torch.from_numpy(images))
    with torch.inference_mode():
        return {name: model(batch).argmax(1).numpy() for name, model in models.items()}


def _row(predicted: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Accuracy per model, and the share of the images the ensemble reads as each wrong class (largest first)."""
    wrong = predicted[ENSEMBLE][predicted[ENSEMBLE] != labels]
    counts = np.bincount(wrong, minlength=10)
    misread = {str(digit): round(int(counts[digit]) / len(labels), 4) for digit in np.argsort(-counts, kind="stable") if counts[digit]}
    return {
        "images": len(labels),
        "accuracy": {name: round(float((labels_read == labels).mean()), 4) for name, labels_read in predicted.items()},
        "ensemble_misread_as": misread,
    }


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {name: round(float(np.mean([row["accuracy"][name] for row in rows])), 4) for name in rows[0]["accuracy"]}


def write_scores(path: Path, weights_dir: Path, per_variant: int, command: str) -> dict[str, Any]:
    """Score the weights in ``weights_dir`` per style and per degradation; writes and returns the figures."""
    started = time.perf_counter()
    models, sha256 = _readers(weights_dir)
    variants = []
    for index, variant in enumerate(VARIANTS):
        images = variant_pool(index, per_variant)
        row = _row(_read(models, images), np.full(per_variant, variant.label))
        variants.append({"variant": variant.name, "label": variant.label, "european": variant.european, **row})
        print(f"{variant.name:18s} {'*' if variant.european else ' '} ensemble {100 * row['accuracy'][ENSEMBLE]:6.2f}%", flush=True)
    degradations = []
    for name in DEGRADATIONS:
        images, labels = degraded_pool(name, per_variant)
        degradations.append({"degradation": name, **_row(_read(models, images), labels)})
        print(f"{'any, ' + name:20s} ensemble {100 * degradations[-1]['accuracy'][ENSEMBLE]:6.2f}%", flush=True)
    result = {
        "command": command,
        "seed": SCORE_SEED,
        "per_variant": per_variant,
        "weights_sha256": sha256,
        "wall_s": 0.0,
        "mean_accuracy": {
            "mnist_style": _mean([row for row in variants if not row["european"]]),
            "european": _mean([row for row in variants if row["european"]]),
        },
        "variants": variants,
        "degradations": degradations,
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result
