"""Encoding a written number's reading from its pieces' answers: which pieces count as digits."""

import numpy as np

from core.segment import Alternative, Glyph, Piece, Segmentation
from service.handler import Classification
from service.reader import encode_readings


def _glyph(x: int, small: bool = False) -> Glyph:
    return Glyph((Alternative((Piece(np.zeros((28, 28), np.float32), (x, 0, x + 10, 20), small),)),))


def _answers(labels: list[int], scores: list[float], threshold: float) -> Classification:
    probabilities = np.eye(10)[labels]
    score = np.array(scores)
    return Classification(probabilities, np.array(labels), np.ones(len(labels)), score, score >= threshold)


def test_a_piece_is_read_at_the_piece_threshold_below_the_image_threshold() -> None:
    segmentation = Segmentation(tuple(_glyph(x) for x in (0, 20, 40, 60)))
    # Image threshold 0.5, piece threshold 0.2: the piece scored 0.3 is not a digit alone but is one in a number.
    result = _answers([7, 2, 1, 0], [0.9, 0.3, 0.2, 0.19], threshold=0.5)
    (reading,) = encode_readings("ensemble", [segmentation], result, piece_threshold=0.2).readings
    assert [digit.is_digit for digit in reading.digits] == [True, True, True, False]
    assert reading.text == "721"
    assert [digit.box for digit in reading.digits][1] == [20, 0, 30, 20]


def test_a_small_piece_is_never_a_digit_however_sure_the_model_is() -> None:
    segmentation = Segmentation((_glyph(0), _glyph(20, small=True), _glyph(40)))
    result = _answers([4, 1, 2], [0.99, 0.99, 0.99], threshold=0.5)
    (reading,) = encode_readings("ensemble", [segmentation], result, piece_threshold=0.2).readings
    assert reading.text == "42"
    assert [digit.is_digit for digit in reading.digits] == [True, False, True]
