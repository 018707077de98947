"""Is it a digit at all? A score from the calibrated probabilities, and a fitted threshold.

Pure numpy (no torch), so the service, the evaluation and the tests compute it the same
way from the probabilities a model returns.

The threshold of each served model is fitted on validation data only (see
``models.train.fit_is_digit``): the largest threshold that rejects at most
``MAX_DIGITS_REJECTED`` (0.5%) of the 5,000 validation digits; the non-digit rejection
rate is then read off the validation pool of synthetic non-digits (``models.nondigits``).
"""

from collections.abc import Callable

import numpy as np

__all__ = ["MAX_DIGITS_REJECTED", "SCORES", "digit_score", "fit_threshold", "is_digit", "rejected_fraction"]

MAX_DIGITS_REJECTED = 0.005


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


def digit_score(probabilities: np.ndarray, score: str = "max_probability") -> np.ndarray:
    """N x C probabilities (rows sum to 1) -> N scores in [0, 1]; higher means more digit-like.

    ``max_probability`` is the calibrated confidence of the predicted class (Hendrycks and
    Gimpel 2017); ``one_minus_normalised_entropy`` is 1 - H(p) / log(C). Both are 1 for a
    one-hot row and minimal for the uniform row.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(f"expected N x C probabilities, got shape {probabilities.shape}")
    try:
        return SCORES[score](probabilities)
    except KeyError:
        raise ValueError(f"unknown score {score!r}; expected one of {sorted(SCORES)}") from None


def is_digit(probabilities: np.ndarray, threshold: float, score: str = "max_probability") -> np.ndarray:
    """True where the digit score reaches ``threshold`` (score >= threshold is a digit)."""
    return digit_score(probabilities, score) >= threshold


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
