"""A prediction's life for a digit classifier, the same for every protocol:

decode (files -> N x 1 x 28 x 28) -> batch and predict (the inference backend) -> classify
(probabilities -> labels, confidences, is it a digit) -> encode (the protocol's response). ``/predict``
and the Open Inference Protocol are thin adapters: each reads its own body and writes its
own response around ``model``, ``predict`` and, for image files, ``decode``.
"""

import asyncio
import functools
import os
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np

from core.digit_rule import DigitRule
from core.errors import InputError
from core.preprocess import Blank, decode_image, to_mnist
from core.spec import INPUT_SHAPE, SERVED_MODELS
from service import tracing
from service.config import Settings
from service.connections import Departure
from service.errors import LoadRefused, Overloaded
from service.inference.backend import InferenceBackend
from service.schemas import Prediction, PredictResponse
from service.uploads import RawImage, input_name

__all__ = ["Classification", "DigitClassifier", "Images", "decode_files", "encode_predictions"]

# Up to this many bytes of images are decoded on the event loop (a 28x28 PNG takes tens of
# microseconds, less than a thread hand-off); more go to a thread so that one large upload
# cannot stall other requests.
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection first
INLINE_DECODE_BYTES = 16 * 1024


@dataclass(frozen=True)
class Classification:
    """N answers: calibrated probabilities (N x 10), the most probable digit and its probability,
    the digit score in [0, 1] and whether it reaches the model's threshold."""

    probabilities: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    digit_score: np.ndarray
    is_digit: np.ndarray

    @classmethod
    def of(cls, probabilities: np.ndarray, rule: DigitRule, blank: np.ndarray | None = None) -> "Classification":
        """``blank`` marks images with no ink at all: their score is 0 and they are not digits."""
        labels = probabilities.argmax(axis=1)
        score = rule.scores(probabilities)
        digit = score >= rule.threshold
        if blank is not None:
            score, digit = np.where(blank, 0.0, score), digit & ~blank
        return cls(probabilities, labels, probabilities[np.arange(len(labels)), labels], score, digit)


@dataclass(frozen=True)
class Images:
    """Decoded uploads: N x 1 x 28 x 28 float32 intensities in [0, 1], and which of them had no ink
    (those are all zeros, the empty MNIST canvas, and are answered ``is_digit: false``)."""

    pixels: np.ndarray
    blank: np.ndarray

    @classmethod
    def of(cls, pixels: np.ndarray) -> "Images":
        """Pixels that arrive as tensors (V2): an all-zero image is as blank as an empty upload."""
        return cls(pixels, np.asarray(~(pixels.reshape(len(pixels), -1) > 0).any(axis=1)))


def decode_files(images: list[RawImage], max_pixels: int) -> Images:
    """Every image that decodes is an answer; the first one that does not stops the request."""
    pixels = np.zeros((len(images), *INPUT_SHAPE), dtype=np.float32)
    blank = np.zeros(len(images), dtype=bool)
    for image in images:
        try:
            pixels[image.index, 0] = to_mnist(decode_image(image.data, max_pixels=max_pixels))
        except Blank:
            blank[image.index] = True
        except InputError as exc:
            raise InputError(f"{input_name(image.index, image.filename)} {exc.message}", exc.status_code) from None
    return Images(pixels, blank)


def encode_predictions(model: str, result: Classification, inputs: np.ndarray | None = None) -> PredictResponse:
    seen = inputs[:, 0].round(4).tolist() if inputs is not None else [None] * len(result.labels)
    return PredictResponse(
        model=model,
        predictions=[
            Prediction(label=label, confidence=confidence, probabilities=row, is_digit=digit, digit_score=score, input=image)
            for label, confidence, row, digit, score, image in zip(
                result.labels.tolist(),
                result.confidence.tolist(),
                result.probabilities.tolist(),
                result.is_digit.tolist(),
                result.digit_score.tolist(),
                seen,
                strict=True,
            )
        ],
    )


class DigitClassifier:
    def __init__(self, backend: InferenceBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        # Decoding a large image needs memory; one decode per core bounds both memory and CPU.
        self.decode_limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        self._rules: dict[str, DigitRule] = {}
        self._rules_generation = 0

    def model(self, name: str | None) -> str:
        """The served model a request names (the default when none): the one unknown-model check."""
        chosen = name or self.settings.default_model
        if chosen not in SERVED_MODELS:
            raise InputError(f"unknown model {chosen!r}; available: {', '.join(SERVED_MODELS)}", status_code=404)
        return chosen

    async def decode(self, images: list[RawImage]) -> Images:
        with tracing.span("decode", images=len(images)):
            if sum(len(image.data) for image in images) <= INLINE_DECODE_BYTES:
                return decode_files(images, self.settings.max_image_pixels)
            return await anyio.to_thread.run_sync(decode_files, images, self.settings.max_image_pixels, limiter=self.decode_limiter)

    async def predict(self, model: str, images: Images, departure: Departure | None = None) -> Classification:
        """The answer for ``images``; given the request's ``departure``, the wait (and the queued work) ends
        as soon as the client leaves, with a 499 that nobody reads."""
        try:
            with tracing.span("infer", model=model, images=len(images.pixels)):
                async with asyncio.timeout(self.settings.request_timeout_s) as deadline:  # unlike wait_for, no extra task
                    leave = functools.partial(deadline.reschedule, -1.0)  # a deadline in the past expires now
                    if departure is not None:
                        departure.watch(leave)
                    try:
                        probabilities = await self.backend.predict(model, images.pixels)
                    finally:
                        if departure is not None and not departure.happened:
                            departure.forget(leave)
        except TimeoutError:
            if departure is not None and departure.happened:
                raise InputError("the client closed the connection before its answer", CLIENT_GONE) from None
            raise Overloaded(f"inference on {model!r} did not finish within {self.settings.request_timeout_s} s") from None
        return Classification.of(probabilities, await self.digit_rule(model), images.blank)

    async def digit_rule(self, model: str) -> DigitRule:
        """From the backend's model cards, asked again only when a load has swapped weights:
        the metadata beside the weights holds it."""
        generation = self.backend.status().weights_generation
        if not self._rules or generation != self._rules_generation:
            self._rules = {card["name"]: DigitRule.of(card) for card in (await self.backend.describe())["models"]}
            self._rules_generation = generation
        return self._rules[model]

    async def load(self, model: str) -> list[str]:
        """New weights for ``model`` from the weights directory (the model repository's load)."""
        try:
            return await self.backend.load(model)
        except LoadRefused as exc:
            raise InputError(f"model {model!r} was not loaded: {exc}", status_code=400) from None
