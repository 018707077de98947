"""Is it a digit at all? A score from the calibrated probabilities, and a fitted threshold.

Pure numpy (no torch), so the service, the evaluation and the tests compute it the same
way from the probabilities a model returns.

The score is taken of the probabilities softened by a temperature (ODIN, Liang et al.
2018): a calibrated model is sure of most digits and of many non-digits alike, and
flattening both spreads the non-digits out below the digits.

Each served model's score, temperature and threshold are fitted on validation data only
(``models.training.report.is_digit_report``): the threshold is the largest that rejects at most
``MAX_DIGITS_REJECTED`` (0.5%) of the 5,000 validation digits, and the score and temperature
are the pair that then rejects the most validation non-digits (``models.nondigits``).

A piece of a written number (``POST /read``) is held to a lower bar, ``piece_threshold``: the
largest that rejects at most ``MAX_PIECE_DIGITS_REJECTED`` (0.05%) of the validation digits
(and twice that of the synthesised ones).
Segmentation has already found ink of a digit's height there, and a digit dropped from a
number costs the whole reading (docs/evaluation.md, "Written numbers", measures both bars on
numbers of training digits: ``python -m evaluation.numbers --split train``).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_DIGITS_REJECTED",
    "MAX_PIECE_DIGITS_REJECTED",
    "SCORES",
    "TEMPERATURES",
    "DigitRule",
    "digit_score",
    "fit_threshold",
    "is_digit",
    "rejected_fraction",
]

MAX_DIGITS_REJECTED = 0.005
MAX_PIECE_DIGITS_REJECTED = 0.0005
TEMPERATURES = (1.0, 1.5, 2.0, 3.0)  # the score temperatures the fitting chooses from


def _max_probability(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities.max(axis=1), dtype=np.float64)


def _one_minus_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(probabilities.shape[1])
    return np.clip(1.0 - entropy, 0.0, 1.0)


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_probability": _max_probability,
    "one_minus_normalised_entropy": _one_minus_entropy,
}


def _softened(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / temperature): the same ranking of classes, flatter for temperature > 1."""
    if temperature == 1.0:
        return probabilities
    scaled = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def digit_score(probabilities: np.ndarray, score: str = "max_probability", temperature: float = 1.0) -> np.ndarray:
    """N x C probabilities (rows sum to 1) -> N scores in [0, 1]; higher means more digit-like.

    ``max_probability`` is the confidence of the predicted class (Hendrycks and Gimpel
    2017); ``one_minus_normalised_entropy`` is 1 - H(p) / log(C). Both are taken of the
    probabilities softened by ``temperature``, and both are 1 for a one-hot row and minimal
    for the uniform row.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(f"expected N x C probabilities, got shape {probabilities.shape}")
    if not temperature > 0:
        raise ValueError(f"the score temperature must be positive, got {temperature}")
    try:
        scorer = SCORES[score]
    except KeyError:
        raise ValueError(f"unknown score {score!r}; expected one of {sorted(SCORES)}") from None
    return scorer(_softened(probabilities, temperature))


def is_digit(probabilities: np.ndarray, threshold: float, score: str = "max_probability", temperature: float = 1.0) -> np.ndarray:
    """True where the digit score reaches ``threshold`` (score >= threshold is a digit)."""
    return digit_score(probabilities, score, temperature) >= threshold


@dataclass(frozen=True)
class DigitRule:
    """One model's fitted rule: a score of its probabilities, softened by a temperature, against a
    threshold (a whole image) and a lower one (a piece of a written number), as the ``is_digit``
    block of its weights' metadata records them."""

    score: str
    temperature: float
    threshold: float
    piece_threshold: float

    @classmethod
    def of(cls, card: Mapping[str, Any]) -> "DigitRule":
        """Metadata without a ``piece_threshold`` holds pieces to the image's threshold."""
        block = card["is_digit"]
        threshold = float(block["threshold"])
        return cls(block["score"], float(block["temperature"]), threshold, float(block.get("piece_threshold", threshold)))

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        return digit_score(probabilities, self.score, self.temperature)


def fit_threshold(digit_scores: np.ndarray, max_rejected: float = MAX_DIGITS_REJECTED) -> float:
    """The largest threshold that rejects (score < threshold) at most ``max_rejected`` of the digits.

    With the scores sorted, rejecting k = floor(max_rejected * n) of them allows a threshold
    up to the (k+1)-th smallest score; any larger one rejects k+1.
    """
    scores = np.sort(np.asarray(digit_scores, dtype=np.float64))
    if scores.size == 0:
        raise ValueError("no digit scores to fit a threshold on")
    k = int(np.floor(max_rejected * scores.size + 1e-9))
    return float(scores[min(k, scores.size - 1)])


def rejected_fraction(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` below ``threshold``, i.e. called "not a digit"."""
    return float(np.mean(np.asarray(scores) < threshold))
