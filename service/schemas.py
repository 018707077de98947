"""Request and response models: the HTTP contract, shared by the server and the client."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.spec import SERVED_MODELS

__all__ = [
    "BatchingInfo",
    "DigitReading",
    "ErrorResponse",
    "HealthResponse",
    "ModelInfo",
    "ModelInfoResponse",
    "PredictJSONRequest",
    "PredictQuery",
    "PredictResponse",
    "Prediction",
    "ReadQuery",
    "ReadResponse",
    "Reading",
    "V2Error",
    "V2InferenceRequest",
    "V2InferenceResponse",
    "V2InputTensor",
    "V2Live",
    "V2ModelMetadata",
    "V2ModelReady",
    "V2OutputTensor",
    "V2Ready",
    "V2RequestedOutput",
    "V2ServerMetadata",
    "V2TensorMetadata",
    "WeightsInfo",
]


class ReadQuery(BaseModel):
    """The query string of ``POST /read``; other parameters are ignored."""

    model: str | None = Field(None, description=f"one of {', '.join(SERVED_MODELS)}")


class PredictQuery(ReadQuery):
    """The query string of ``POST /predict``; other parameters are ignored."""

    include_input: bool = Field(False, description="also return the 28x28 image the model saw")


class PredictJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64 of image files (PNG, JPEG, BMP, GIF, WebP, TIFF)")


class Prediction(BaseModel):
    label: int = Field(ge=0, le=9, description="the predicted digit")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of the predicted digit")
    probabilities: list[float] = Field(min_length=10, max_length=10, description="calibrated probability of 0..9")
    is_digit: bool = Field(
        description="false when the image does not look like one handwritten digit, or holds no ink at all (a blank image); "
        "label and probabilities are still given (for a blank image, the model's answer for an empty 28x28, which means nothing)"
    )
    digit_score: float = Field(
        ge=0,
        le=1,
        description="how digit-like the image is (0 for a blank image); is_digit is digit_score >= the model's threshold (/model-info)",
    )
    input: list[list[float]] | None = Field(
        None, description="the 28x28 image the model saw (0 = background, 1 = ink); only with ?include_input=true"
    )


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class DigitReading(BaseModel):
    """One piece of a written number: a digit, or ink that is not one (a point, a comma, a dash, a sign)."""

    label: int = Field(ge=0, le=9, description="the digit the model reads in this piece")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of that digit, as /predict gives it")
    is_digit: bool = Field(
        description="false when the piece does not look like a handwritten digit (its digit score is below the model's "
        "is_digit piece_threshold in /model-info, a lower bar than /predict's threshold) or is less than half as tall as "
        "the number's digits (a point, a comma, a dash); such pieces are left out of text"
    )
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description="[x0, y0, x1, y1]: the piece's left, top, right and bottom edges in the uploaded image's pixels "
        "(x1 and y1 exclusive), the image turned upright as its EXIF orientation says",
    )


class Reading(BaseModel):
    """The number written on one image."""

    text: str = Field(
        pattern=r"^[0-9]*$",
        description='the labels of the pieces with is_digit true, left to right; "" when the image holds no digit (a blank image)',
    )
    confidence: float = Field(
        ge=0,
        le=1,
        description="how sure the model is of text: the product of its digits' confidences (1 for an empty text); "
        "the pieces left out of text are in digits, with is_digit false",
    )
    digits: list[DigitReading] = Field(description="every piece of ink read, left to right, digits or not")


class ReadResponse(BaseModel):
    model: str
    readings: list[Reading] = Field(description="one reading per image, in input order")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and with which input")


class HealthResponse(BaseModel):
    status: str
    detail: str | None = None


class WeightsInfo(BaseModel):
    file: str | None
    sha256: str | None
    members: dict[str, str] | None = Field(None, description="for the ensemble: member name -> weights sha256")


class ModelInfo(BaseModel):
    name: str
    architecture: str
    parameters: int
    macs_per_image: int
    input_shape: list[int]
    classes: list[int]
    device: str
    dtype: str
    weights: WeightsInfo
    metrics: dict[str, Any] = Field(description="test and validation accuracy from training")
    calibration: dict[str, Any]
    is_digit: dict[str, Any] | None = Field(
        None,
        description="how is_digit is decided: method, score, temperature, threshold (an image), piece_threshold (a piece of a "
        "written number, /read), rates, and the preprocessing version fitted with",
    )
    preprocessing_version: int = Field(description="the preprocessing this server runs; is_digit is measured where the two versions agree")
    recipe: dict[str, Any] | None = Field(None, description="the training recipe (None for the ensemble)")
    cuda_graphs: bool = Field(description="forward passes replay captured CUDA graphs")
    traced: bool = Field(description="CPU forward passes run one frozen TorchScript graph (false: eager passes)")
    batches: int = Field(description="forward passes run since start")
    images: int = Field(description="images predicted since start")
    mean_batch_size: float
    largest_batch: int


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_wait_ms: float
    max_queue_images: int
    request_timeout_s: float
    workers: int = Field(description="HTTP worker processes sharing the batchers")


class ModelInfoResponse(BaseModel):
    default_model: str
    models: list[ModelInfo]
    batching: BatchingInfo
    settings: dict[str, Any]
    device: str
    service_version: str
    torch_version: str


# Open Inference Protocol (KServe V2) -----------------------------------------------------


class V2Error(BaseModel):
    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the tensor's bytes follow the JSON header")
    data: list[Any] | None = Field(None, description="row-major, flat or nested; absent when sent as binary data")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2InputTensor]
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the tensor follows the JSON header")
    data: list[float] | list[int] | list[bool] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2OutputTensor]


# Model repository extension (as Triton's) ------------------------------------------------


class V2RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, or UNAVAILABLE with a reason")
    reason: str
    sha256: str | None = Field(description="the weights served under this name (the ensemble: none of its own)")


class V2RepositoryLoaded(BaseModel):
    name: str
    swapped: list[str] = Field(description="the models whose weights changed (a member's new weights swap the ensemble too)")
