"""Reading a written number: each image split into candidate digits (``core.segment``), every
candidate of every image classified in one batched call through the same backend as ``/predict``,
and for each glyph the reading the classifier is most sure of.

A piece is a digit (``is_digit``) when its digit score reaches the model's piece threshold (the
digit rule of ``/predict`` with a lower bar: ``core.digit_rule``) and it is at least half as
tall as the number's digits; ``text`` is the labels of the digits, left to right, and its
confidence the product of theirs.
"""

import dataclasses
import math

import anyio.to_thread
import numpy as np

from core.errors import InputError
from core.preprocess import decode_upright
from core.segment import Segmentation, best_alternative, segment
from service.handler import Classification, DigitClassifier, Images
from service.schemas import DigitReading, Reading, ReadResponse
from service.uploads import RawImage, input_name

__all__ = ["NumberReader", "encode_readings", "segment_files"]

NOTHING = Classification(*(np.zeros(0) for _ in range(5)))  # the answers for no pieces at all


def segment_files(images: list[RawImage], max_pixels: int) -> list[Segmentation]:
    """Every image that decodes is segmented (a blank one into no glyphs); the first one that does not stops the request."""
    segmentations = []
    for image in images:
        try:
            picture, size = decode_upright(image.data, max_pixels=max_pixels)
            segmentations.append(segment(picture, size))
        except InputError as exc:
            raise InputError(f"{input_name(image.index, image.filename)} {exc.message}", exc.status_code) from None
    return segmentations


def _reading(segmentation: Segmentation, result: Classification, offset: int, piece_threshold: float) -> tuple[Reading, int]:
    """The reading of one image whose pieces' answers start at ``offset`` of ``result``; and where the next image's start."""
    digits = []
    for glyph in segmentation.glyphs:
        sizes = [len(alternative.pieces) for alternative in glyph.alternatives]
        chosen = best_alternative(glyph, result.digit_score[offset : offset + sum(sizes)].tolist())
        start = offset + sum(sizes[:chosen])
        for index, piece in enumerate(glyph.alternatives[chosen].pieces, start):
            digits.append(
                DigitReading(
                    label=int(result.labels[index]),
                    confidence=float(result.confidence[index]),
                    is_digit=bool(result.digit_score[index] >= piece_threshold) and not piece.small,
                    box=list(piece.box),
                )
            )
        offset += sum(sizes)
    read = [digit for digit in digits if digit.is_digit]
    text = "".join(str(digit.label) for digit in read)
    return Reading(text=text, confidence=math.prod(digit.confidence for digit in read), digits=digits), offset


def encode_readings(model: str, segmentations: list[Segmentation], result: Classification, piece_threshold: float) -> ReadResponse:
    """One reading per image, in order; ``result`` answers every piece of every image, in order."""
    readings = []
    offset = 0
    for segmentation in segmentations:
        reading, offset = _reading(segmentation, result, offset, piece_threshold)
        readings.append(reading)
    return ReadResponse(model=model, readings=readings)


def _joined(results: list[Classification]) -> Classification:
    return Classification(*(np.concatenate([getattr(r, field.name) for r in results]) for field in dataclasses.fields(Classification)))


class NumberReader:
    """``/read`` on top of a ``DigitClassifier``: its backend, settings, decode limiter and digit rules."""

    def __init__(self, classifier: DigitClassifier) -> None:
        self.classifier = classifier

    async def segment(self, images: list[RawImage]) -> list[Segmentation]:
        """Decoding and segmenting take milliseconds per photo: in a thread, one per core at a time."""
        max_pixels = self.classifier.settings.max_image_pixels
        return await anyio.to_thread.run_sync(segment_files, images, max_pixels, limiter=self.classifier.decode_limiter)

    async def read(self, model: str, segmentations: list[Segmentation]) -> ReadResponse:
        """Every piece of every image classified in one batched call (through the backend's batcher,
        with every other request's images), then each glyph's best reading."""
        pieces = [piece.pixels for segmentation in segmentations for piece in segmentation.pieces()]
        piece_threshold = (await self.classifier.digit_rule(model)).piece_threshold
        if not pieces:  # only blank images: nothing to ask the model
            return encode_readings(model, segmentations, NOTHING, piece_threshold)
        pixels = np.stack(pieces)[:, None]
        # One call for all of a request's pieces, unless there are more than a request may hold
        # images: then one call per that many, so that no call alone overfills the model's queue.
        step = self.classifier.settings.max_images_per_request
        chunks = [pixels[start : start + step] for start in range(0, len(pixels), step)]
        results = [await self.classifier.predict(model, Images(chunk, np.zeros(len(chunk), dtype=bool))) for chunk in chunks]
        return encode_readings(model, segmentations, results[0] if len(results) == 1 else _joined(results), piece_threshold)
