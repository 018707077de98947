"""A typed Python client for the handwritten digit recogniser, and the ``digits`` command line.

``Client`` (sync) and ``AsyncClient`` (async) turn paths, image bytes, PIL images and numpy
arrays into the multipart request ``/predict`` and ``/read`` expect, retry what is worth retrying (502,
503 and 504 with their Retry-After, refused connections), and return pydantic models
(``digits_client.models``). Errors form one hierarchy rooted at ``DigitsError``.

Only httpx and pydantic are needed: importing this package never imports torch, numpy or
Pillow, nor anything of the server.

    from digits_client import Client

    with Client("http://localhost:8000") as digits:
        print(digits.predict("seven.png").predictions[0].label)
        print(digits.read("cheque.jpg").readings[0].text)
"""

from digits_client._version import __version__
from digits_client.client import DEFAULT_URL, AsyncClient, Client
from digits_client.errors import (
    DigitsConnectionError,
    DigitsError,
    DigitsHTTPError,
    DigitsInputError,
    DigitsResponseError,
    DigitsTimeoutError,
)
from digits_client.images import ImageInput
from digits_client.models import (
    BatchingInfo,
    DigitReading,
    ModelInfo,
    ModelInfoResponse,
    Prediction,
    PredictResponse,
    Reading,
    ReadResponse,
    WeightsInfo,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "BatchingInfo",
    "Client",
    "DigitReading",
    "DigitsConnectionError",
    "DigitsError",
    "DigitsHTTPError",
    "DigitsInputError",
    "DigitsResponseError",
    "DigitsTimeoutError",
    "ImageInput",
    "ModelInfo",
    "ModelInfoResponse",
    "PredictResponse",
    "Prediction",
    "ReadResponse",
    "Reading",
    "WeightsInfo",
    "__version__",
]
