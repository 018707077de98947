"""Decoding cost per image: ``decode_image`` + ``to_mnist`` on a few kinds of upload, in microseconds.

    python -m bench.preprocess                           # this checkout's core.preprocess
    python -m bench.preprocess --baseline 9ff2348        # and another commit's, side by side, with the ratio

The baseline's preprocessing module is read with ``git show`` and imported under another
name, so both run in one process on the same bytes, interleaved kind by kind, under the same
load. Each kind is a set of different MNIST test digits rendered by ``evaluation.corpus``; a
row is the median over ``--repeats`` passes of the mean time per image of a pass.
"""

import argparse
import io
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from core import preprocess
from evaluation import corpus, mnist

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 25_000_000
Prepare = Callable[[bytes], np.ndarray]


def _png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The MNIST digit itself as a 28x28 PNG: the form that passes through untouched."""
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()


KINDS: dict[str, corpus.Render] = {
    "mnist-28x28-png": _png,
    "canvas-rgba-png": corpus.STYLES["canvas-rgba"].render,
    "paper-400x400-jpeg": partial(corpus.photo, corpus.Photo(picture=(400, 400), paper=(200, 220))),
    "paper-400x400-blue-jpeg": partial(corpus.photo, corpus.Photo(picture=(400, 400), pens=("blue",))),
    "scan-png": corpus.STYLES["scan-clean"].render,
    "onebit-16-png": corpus.STYLES["onebit-16"].render,
}


def baseline_module(revision: str) -> types.ModuleType:
    """The preprocessing module as of ``revision``, imported as a module of its own.

    It is ``core/preprocess.py``, or ``service/preprocess.py`` in revisions older than the core.
    """
    for path in ("core/preprocess.py", "service/preprocess.py"):
        shown = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"{revision} has no preprocessing module: {shown.stderr.strip()}")
    module = types.ModuleType(f"preprocess_{revision}")
    exec(compile(shown.stdout, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def preparer(module: types.ModuleType) -> Prepare:
    def prepare(data: bytes) -> np.ndarray:
        return module.to_mnist(module.decode_image(data, max_pixels=LIMIT))

    return prepare


def time_per_image(prepare: Prepare, images: list[bytes]) -> float:
    """Seconds per image for one pass over ``images``."""
    started = time.perf_counter()
    for data in images:
        prepare(data)
    return (time.perf_counter() - started) / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a git revision whose preprocessing runs beside this one")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=50, help="different digits per kind")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    digits = mnist.load(args.data_dir, train=False).images[: args.images]
    candidates = {"this": preparer(preprocess)}
    if args.baseline:
        candidates[args.baseline] = preparer(baseline_module(args.baseline))
    header = f"{'kind':26s} {'bytes':>7s} " + " ".join(f"{name + ' us':>12s}" for name in candidates)
    print(header + (" ratio" if args.baseline else ""))
    for kind, render in KINDS.items():
        images = [render(digit, corpus.style_rng(0, kind, i)) for i, digit in enumerate(digits)]
        for prepare in candidates.values():
            time_per_image(prepare, images)  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, prepare in candidates.items():
                samples[name].append(time_per_image(prepare, images))
        medians = [statistics.median(values) * 1e6 for values in samples.values()]
        row = f"{kind:26s} {int(np.mean([len(x) for x in images])):7d} " + " ".join(f"{m:12.0f}" for m in medians)
        print(row + (f" {medians[0] / medians[1]:5.2f}x" if args.baseline else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
