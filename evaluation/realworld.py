"""Score the real-world corpus through the running HTTP service, per style.

    python -m evaluation.realworld                      # starts `python -m service` itself, full corpus
    python -m evaluation.realworld --url http://host:8000 --per-style 100 --model resnet
    python -m evaluation.realworld --server-dir /tmp/other-checkout --out other.json

The corpus (``evaluation.corpus``) renders the same MNIST *test* digits (a seeded sample of
``--per-style`` of them) in every style. Each image goes to ``POST /predict`` as a multipart
``files`` part, in batches, exactly as a client sends it; a batch the server refuses (one
image read as blank) is sent again image by image, so that one refusal costs one error.
Without ``--url`` the server runs from ``--server-dir`` (default: this checkout) on a free
loopback port in a process group of its own, which is ended afterwards, whatever happens.

Beside the corpus, one real set from writers outside MNIST is scored the same way: the UCI
optical-recognition digits as scikit-learn ships them (``load_digits``: 1,797 digits, each an
8x8 count of ink in 4x4 blocks of a 32x32 scan, 0-16), sent as 8x8 PNGs. Nothing is fitted
on it.
"""

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from evaluation import corpus, mnist
from evaluation.server import add_server_flags, model_weights, server_url
from models import nondigits

__all__ = ["StyleScore", "main", "score_style"]

FORMATS = {b"\x89PNG": ("png", "image/png"), b"\xff\xd8\xff": ("jpg", "image/jpeg")}


@dataclass(frozen=True)
class StyleScore:
    """How one style fared: ``predicted`` holds -1 where the server refused the image;
    ``not_digit`` counts the images the server answered with ``is_digit: false``."""

    style: str
    family: str
    images: int
    correct: int
    target: float
    predicted: list[int]
    not_digit: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def errors(self) -> int:
        return self.images - self.correct

    @property
    def met(self) -> bool:
        return self.accuracy >= self.target


def _part(style: str, index: int, data: bytes) -> tuple[str, tuple[str, bytes, str]]:
    extension, content_type = next((kind for magic, kind in FORMATS.items() if data.startswith(magic)), ("bin", "application/octet-stream"))
    return ("files", (f"{style}-{index}.{extension}", data, content_type))


Answer = tuple[int, bool]  # label (-1: refused), is_digit


def predict(http: httpx.Client, model: str, parts: list[tuple[str, tuple[str, bytes, str]]]) -> list[Answer]:
    """(label, is_digit) for a batch of parts; (-1, False) for an image the server refuses (bytes that do not decode)."""
    response = http.post("/predict", params={"model": model}, files=parts)
    if response.status_code == 200:
        return [(int(p["label"]), bool(p["is_digit"])) for p in response.json()["predictions"]]
    if response.status_code not in (413, 422) or len(parts) == 1:
        if 400 <= response.status_code < 500:
            return [(-1, False)] * len(parts)
        response.raise_for_status()
    return [answer for part in parts for answer in predict(http, model, [part])]


def _predict_all(http: httpx.Client, model: str, parts: list[tuple[str, tuple[str, bytes, str]]], batch: int) -> list[Answer]:
    return [answer for start in range(0, len(parts), batch) for answer in predict(http, model, parts[start : start + batch])]


def score_style(http: httpx.Client, style: str, digits: mnist.Digits, *, model: str, seed: int, batch: int) -> StyleScore:
    """Render every digit in ``style``, send them in batches, count the right labels."""
    parts = [_part(style, i, data) for i, data in enumerate(corpus.iter_rendered(style, digits.images, seed))]
    answers = _predict_all(http, model, parts, batch)
    predicted = [label for label, _ in answers]
    correct = int(np.count_nonzero(np.asarray(predicted) == digits.labels))
    entry = corpus.STYLES[style]
    not_digit = sum(not digit for _, digit in answers)
    return StyleScore(style, entry.family, len(parts), correct, corpus.TARGETS[entry.family], predicted, not_digit)


def score_non_digits(http: httpx.Client, per_kind: int, *, model: str, batch: int) -> dict[str, dict[str, float]]:
    """Synthetic non-digits of every kind (``models.nondigits``, its evaluation seed, never fitted on),
    rendered at their own size and sent as PNG files: the share the server calls not a digit."""
    rng = np.random.default_rng(nondigits.EVALUATION_SEED)
    rates: dict[str, dict[str, float]] = {}
    for kind in nondigits.KINDS:
        parts = []
        for i in range(per_kind):
            buffer = io.BytesIO()
            nondigits.render_kind(kind, rng).save(buffer, format="PNG")
            parts.append(_part(f"non-digit-{kind}", i, buffer.getvalue()))
        answers = _predict_all(http, model, parts, batch)
        rates[kind] = {
            "images": per_kind,
            "called_not_a_digit": sum(not digit for _, digit in answers) / per_kind,
            "refused_as_blank": sum(label == -1 for label, _ in answers) / per_kind,
        }
    return rates


def sample(digits: mnist.Digits, count: int, seed: int) -> tuple[mnist.Digits, np.ndarray]:
    """The same ``count`` digits for every style: a seeded sample without replacement."""
    index = np.sort(np.random.default_rng(seed).permutation(len(digits))[:count])
    return mnist.Digits(digits.images[index], digits.labels[index]), index


def table(scores: list[StyleScore]) -> str:
    """The per-style accuracy table as Markdown."""
    lines = [
        "| style | family | images | accuracy | errors | target | met | called not a digit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in scores:
        lines.append(
            f"| `{s.style}` | {s.family} | {s.images} | {s.accuracy:.2%} | {s.errors} | {s.target:.0%} | {'yes' if s.met else 'no'} "
            f"| {s.not_digit / s.images:.1%} |"
        )
    return "\n".join(lines)


def non_digit_table(rates: dict[str, dict[str, float]]) -> str:
    lines = ["| non-digit kind | images | called not a digit |", "| --- | --- | --- |"]
    lines += [f"| {kind} | {r['images']:.0f} | {r['called_not_a_digit']:.1%} |" for kind, r in rates.items()]
    total = sum(r["images"] for r in rates.values())
    overall = sum(r["called_not_a_digit"] * r["images"] for r in rates.values()) / total
    return "\n".join([*lines, f"| **all** | {total:.0f} | **{overall:.1%}** (target >= 95%) |"])


def _errors(score: StyleScore, digits: mnist.Digits, index: np.ndarray) -> list[str]:
    """``"MNIST index: true label -> predicted label"`` for every wrong answer (-1: refused)."""
    wrong = np.flatnonzero(np.asarray(score.predicted) != digits.labels)
    return [f"{int(index[i])}: {int(digits.labels[i])} -> {score.predicted[i]}" for i in wrong]


@dataclass(frozen=True)
class SetScore:
    """How a real set fared: wrong answers as ``"index: label -> answer"`` (-1: refused)."""

    images: int
    accuracy: float
    called_not_a_digit: float
    errors: list[str]


def score_uci(http: httpx.Client, *, model: str, batch: int) -> SetScore:
    """The UCI 8x8 digits (scikit-learn's copy), white on black as the counts are, through ``POST /predict``."""
    from sklearn.datasets import load_digits  # a dev dependency: only the evaluation reads this set

    uci = load_digits()
    parts = []
    for i, counts in enumerate(uci.images):
        buffer = io.BytesIO()
        Image.fromarray(np.rint(counts * 255 / 16).astype(np.uint8), mode="L").save(buffer, format="PNG")
        parts.append(_part("uci-8x8", i, buffer.getvalue()))
    answers = _predict_all(http, model, parts, batch)
    predicted = np.asarray([label for label, _ in answers])
    return SetScore(
        images=len(parts),
        accuracy=float(np.mean(predicted == uci.target)),
        called_not_a_digit=sum(not digit for _, digit in answers) / len(parts),
        errors=[f"{i}: {uci.target[i]} -> {predicted[i]}" for i in np.flatnonzero(predicted != uci.target)],
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_flags(parser)
    parser.add_argument("--per-style", type=int, default=1000, help="digits rendered in every style")
    parser.add_argument("--styles", nargs="+", choices=sorted(corpus.STYLES), help="default: every registered style")
    parser.add_argument("--batch", type=int, default=64, help="images per request")
    parser.add_argument("--non-digits-per-kind", type=int, default=125, help="synthetic non-digits of each kind (0: none)")
    parser.add_argument("--no-uci", dest="uci", action="store_false", help="skip the UCI 8x8 digits (scikit-learn)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a style misses its target")
    return parser


def run(args: argparse.Namespace, url: str) -> tuple[list[StyleScore], dict[str, object]]:
    """Score every chosen style against the server at ``url``; the scores and the JSON-ready result."""
    digits, index = sample(mnist.load(args.data_dir, train=args.split == "train"), args.per_style, args.seed)
    started = time.perf_counter()
    scores = []
    with httpx.Client(base_url=url, timeout=120) as http:
        weights = model_weights(http)
        for style in args.styles or list(corpus.STYLES):
            scores.append(score_style(http, style, digits, model=args.model, seed=args.seed, batch=args.batch))
            s = scores[-1]
            print(f"{s.style:20s} {s.accuracy:8.2%} {s.errors:5d} errors", file=sys.stderr, flush=True)
        rates = score_non_digits(http, args.non_digits_per_kind, model=args.model, batch=args.batch) if args.non_digits_per_kind else {}
        uci = score_uci(http, model=args.model, batch=args.batch) if args.uci else None
    digit_images = sum(s.images for s in scores)
    return scores, {
        "command": "python -m evaluation.realworld " + " ".join(sys.argv[1:]),
        "model": args.model,
        "split": args.split,
        "seed": args.seed,
        "per_style": args.per_style,
        "weights_sha256": weights,
        "wall_s": round(time.perf_counter() - started, 1),
        "styles": [{**{k: v for k, v in asdict(s).items() if k != "predicted"}, "accuracy": s.accuracy, "met": s.met} for s in scores],
        "errors": {s.style: _errors(s, digits, index) for s in scores},
        "table": table(scores),
        "digits_called_not_a_digit": sum(s.not_digit for s in scores) / digit_images if digit_images else None,
        "non_digits": rates,
        "non_digit_table": non_digit_table(rates) if rates else None,
        "uci_8x8": asdict(uci) if uci else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with server_url(args, "realworld") as url:
        scores, result = run(args, url)
    print(table(scores))
    if result["digits_called_not_a_digit"] is not None:
        print(f"\nreal-world digit images called not a digit: {result['digits_called_not_a_digit']:.2%} (target <= 2%)")
    if result["non_digit_table"]:
        print("\n" + str(result["non_digit_table"]))
    uci = result["uci_8x8"]
    if isinstance(uci, dict):
        print(f"\nUCI 8x8 digits (real, {uci['images']}): {uci['accuracy']:.2%} read, {uci['called_not_a_digit']:.2%} called not a digit")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if args.strict and not all(s.met for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
