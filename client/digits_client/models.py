"""The server's answers as the client reads them: pydantic models of /predict, /read and /model-info.

These are the client's own models, written to be tolerant readers so that one client works
against older and newer servers:

- a field is required only where the service contract promises it (label, confidence and
  probabilities of a prediction; name, architecture, parameters, input shape, classes,
  device, weights and metrics of a model); everything else is ``None`` when a server does
  not send it;
- fields a server sends that the client does not know are kept unvalidated (``model_extra``),
  so ``model_dump()`` gives back all the server said.

``tests/test_client_contract.py`` checks every field here against the server's OpenAPI
schema (present on the server with a compatible type, and required there whenever it is
required here), so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchingInfo",
    "DigitReading",
    "ModelInfo",
    "ModelInfoResponse",
    "PredictResponse",
    "Prediction",
    "ReadResponse",
    "Reading",
    "WeightsInfo",
]


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Prediction(_Response):
    """One image's answer."""

    label: int = Field(ge=0, le=9, description="the predicted digit")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of the predicted digit")
    probabilities: list[float] = Field(min_length=10, max_length=10, description="calibrated probability of 0..9")
    input: list[list[float]] | None = Field(
        None, description="the 28x28 image the model saw (0 = background, 1 = ink); only with include_input"
    )
    is_digit: bool | None = Field(
        None, description="false when the image does not look like one handwritten digit; None from a server that does not say"
    )
    digit_score: float | None = Field(
        None, description="how much the image looks like one handwritten digit, in [0, 1]; None from a server that does not say"
    )


class PredictResponse(_Response):
    """The answer to ``POST /predict``: one prediction per image, in input order."""

    model: str = Field(description="the served model that answered")
    predictions: list[Prediction]


class DigitReading(_Response):
    """One piece of a written number: a digit, or ink that is not one (``is_digit`` false)."""

    label: int = Field(ge=0, le=9, description="the digit the model reads in this piece")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of that digit")
    is_digit: bool = Field(description="false for a piece that is no digit (a point, a comma, a dash, a sign): left out of text")
    box: list[int] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in the uploaded image's pixels (x1, y1 exclusive)")


class Reading(_Response):
    """The number written on one image."""

    text: str = Field(description='the digits read, left to right; "" when the image holds none')
    confidence: float = Field(ge=0, le=1, description="the product of the confidences of the digits in text (1 for an empty text)")
    digits: list[DigitReading] = Field(description="every piece of ink read, left to right, digits or not")


class ReadResponse(_Response):
    """The answer to ``POST /read``: one reading per image, in input order."""

    model: str = Field(description="the served model that answered")
    readings: list[Reading]


class WeightsInfo(_Response):
    file: str | None = Field(description="checkpoint file name; None for the ensemble")
    sha256: str | None = Field(description="checkpoint digest; None for the ensemble")
    members: dict[str, str] | None = Field(None, description="for the ensemble: member name -> weights sha256")


class ModelInfo(_Response):
    """One served model."""

    name: str
    architecture: str
    parameters: int
    input_shape: list[int]
    classes: list[int]
    device: str
    weights: WeightsInfo
    metrics: dict[str, Any] = Field(description="test and validation accuracy from training, e.g. test_accuracy")
    macs_per_image: int | None = None
    dtype: str | None = None
    calibration: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = Field(None, description="the training recipe (None for the ensemble)")
    batches: int | None = Field(None, description="forward passes run since start")
    images: int | None = Field(None, description="images predicted since start")
    mean_batch_size: float | None = None
    largest_batch: int | None = None


class BatchingInfo(_Response):
    """The server's dynamic batching settings."""

    max_batch_size: int | None = None
    max_batch_wait_ms: float | None = None
    max_queue_images: int | None = None
    request_timeout_s: float | None = None


class ModelInfoResponse(_Response):
    """The answer to ``GET /model-info``: what the server serves."""

    default_model: str
    models: list[ModelInfo]
    batching: BatchingInfo | None = None
    settings: dict[str, Any] | None = Field(None, description="the server's safe settings")
    service_version: str | None = None
    torch_version: str | None = None
