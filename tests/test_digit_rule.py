"""The digit score and threshold: pure numpy, monotone, score >= threshold means a digit."""

import numpy as np
import pytest

from core.digit_rule import SCORES, TEMPERATURES, digit_score, fit_threshold, is_digit, rejected_fraction


def _rows(confidences: list[float]) -> np.ndarray:
    """Rows with the given top probability, the rest spread evenly over the other 9 classes."""
    return np.array([[c, *([(1 - c) / 9] * 9)] for c in confidences])


@pytest.mark.parametrize("score", SCORES)
def test_scores_are_in_range_and_monotone_in_confidence(score: str) -> None:
    values = digit_score(_rows([0.1, 0.3, 0.5, 0.9, 0.99, 1.0]), score)
    assert values.shape == (6,)
    assert np.all((values >= 0) & (values <= 1))
    assert np.all(np.diff(values) > 0)
    assert values[-1] == pytest.approx(1.0)


def test_the_uniform_row_scores_lowest() -> None:
    assert digit_score(_rows([0.1]))[0] == pytest.approx(0.1)
    assert digit_score(_rows([0.1]), "one_minus_normalised_entropy")[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("score", SCORES)
def test_a_score_temperature_flattens_without_reordering(score: str) -> None:
    rows = _rows([0.3, 0.6, 0.9, 0.99])
    plain = digit_score(rows, score)
    for temperature in TEMPERATURES[1:]:
        softened = digit_score(rows, score, temperature)
        assert np.all(np.diff(softened) > 0)  # the same order of images
        assert np.all(softened < plain)  # every non-uniform row scores lower
    assert digit_score(rows, score, 1.0) == pytest.approx(plain)
    assert digit_score(_rows([0.1]), score, 3.0) == pytest.approx(digit_score(_rows([0.1]), score))  # uniform stays uniform


def test_threshold_semantics_score_at_the_threshold_is_a_digit() -> None:
    probabilities = _rows([0.5, 0.8, 0.95])
    assert is_digit(probabilities, 0.8).tolist() == [False, True, True]
    assert is_digit(probabilities, 0.0).all() and not is_digit(probabilities, 1.01).any()


def test_fit_threshold_is_the_largest_that_rejects_at_most_the_share() -> None:
    scores = np.linspace(0.0, 1.0, 1000)
    threshold = fit_threshold(scores, 0.005)
    assert rejected_fraction(scores, threshold) <= 0.005
    assert rejected_fraction(scores, np.nextafter(threshold, 2.0)) > 0.005
    assert fit_threshold(np.array([0.7]), 0.005) == 0.7


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="N x C"):
        digit_score(np.ones(10))
    with pytest.raises(ValueError, match="unknown score"):
        digit_score(_rows([0.5]), "margin")
    with pytest.raises(ValueError, match="temperature must be positive"):
        digit_score(_rows([0.5]), "max_probability", 0.0)
    with pytest.raises(ValueError, match="no digit scores"):
        fit_threshold(np.array([]))
