"""Open Inference Protocol (KServe V2) REST, with the binary tensor data extension.

Input: one tensor, FP32 intensities in [0, 1] or UINT8 0-255, shape [N, 1, 28, 28] or
[N, 28, 28], white digit on black, already 28x28 (the server normalises), as JSON
``data`` or as binary data after the JSON header (``Inference-Header-Content-Length``,
the tensor's ``binary_data_size``), as Triton's clients send it by default. Output:
``probabilities`` FP32 [N, 10], ``label`` INT64 [N] and ``is_digit`` BOOL [N] (false when
the image does not look like one handwritten digit), as JSON or binary on request
(``binary_data`` per output, ``binary_data_output`` for all). Errors are ``{"error": ...}``.
The tensors' checks and messages are ``service.tensors``', shared with gRPC.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from core.errors import InputError
from service import __version__
from service.connections import departure_of
from service.dependencies import get_handler, serving_handler
from service.errors import invalid_body
from service.handler import Classification, DigitClassifier, Images
from service.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2InputTensor,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
)
from service.tensors import INPUTS, MODEL_VERSION, OUTPUTS, PLATFORM, SERVER_NAME, InputTensor, check_version, output_arrays, select_outputs

__all__ = ["read_infer_request", "router", "to_images"]

INFER_SCHEMA = "#/components/schemas/V2InferenceRequest"
HEADER_LENGTH = "inference-header-content-length"

router = APIRouter(
    prefix="/v2", tags=["open inference protocol (v2)"], responses={code: {"model": V2Error} for code in (400, 404, 413, 503)}
)


async def read_infer_request(request: Request) -> tuple[V2InferenceRequest, bytes]:
    """The JSON header of an infer request and the binary tensor data after it (may be empty).

    The body is JSON whatever its Content-Type says: tritonclient sends none, its aiohttp
    client sends application/octet-stream.
    """
    body = await request.body()
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        header, binary = body, b""
    elif declared.isdigit() and int(declared) <= len(body):
        header, binary = body[: int(declared)], body[int(declared) :]
    else:
        raise InputError(f"Inference-Header-Content-Length {declared!r} is not a length within the {len(body)}-byte body", 400)
    try:
        return V2InferenceRequest.model_validate_json(header), binary
    except ValidationError as exc:
        raise invalid_body(exc, status_code=400) from None


def _values(tensor: V2InputTensor, header: InputTensor, binary: bytes) -> np.ndarray:
    """The tensor's values, flat, from its binary bytes or its JSON data."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InputError(
                f"input {tensor.name!r}: binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON header", 400
            )
        return header.from_bytes(binary)
    if tensor.data is None:
        raise InputError(f"input {tensor.name!r} has neither data nor a binary_data_size parameter", 400)
    try:
        return np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"input {tensor.name!r}: data must be numbers, flat or nested row-major", 400) from None


def to_images(tensor: V2InputTensor, binary: bytes, max_images: int) -> np.ndarray:
    """N x 1 x 28 x 28 float32 in [0, 1] from a V2 input tensor, or an InputError (4xx)."""
    header = InputTensor(tensor.name, tensor.datatype, tensor.shape)
    header.check(max_images)
    return header.images(_values(tensor, header, binary))


def requested_outputs(body: V2InferenceRequest) -> dict[str, dict[str, Any]]:
    """Output name -> its parameters, in the order asked for (all outputs when none are named)."""
    parameters = {output.name: output.parameters or {} for output in body.outputs or []}
    return {name: parameters.get(name, {}) for name in select_outputs(list(parameters))}


def encode_outputs(body: V2InferenceRequest, requested: dict[str, dict[str, Any]], model: str, result: Classification) -> Response:
    """The requested outputs, each as JSON data or, when asked for, binary data after the JSON header."""
    all_binary = bool((body.parameters or {}).get("binary_data_output", False))
    tensors = output_arrays(result)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, parameters in requested.items():
        datatype, array = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if parameters.get("binary_data", all_binary):
            blobs.append(array.tobytes())
            output["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            output["data"] = array.reshape(-1).tolist()
        outputs.append(output)
    answer = {"model_name": model, "model_version": MODEL_VERSION, "outputs": outputs} | ({"id": body.id} if body.id is not None else {})
    header = json.dumps(answer).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


@router.get("/health/live", response_model=V2Live)
async def live() -> V2Live:
    return V2Live(live=True)


@router.get("/health/ready", response_model=V2Ready, responses={400: {"model": V2Ready}})
async def ready(handler: Annotated[DigitClassifier, Depends(get_handler)]) -> V2Ready | JSONResponse:
    """200 when every model is loaded and warmed; 400 (the protocol's "false") otherwise."""
    if not handler.backend.status().ready:
        return JSONResponse(V2Ready(ready=False).model_dump(), status_code=400)
    return V2Ready(ready=True)


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name=SERVER_NAME, version=__version__, extensions=["binary_tensor_data"])


async def served_model(name: str, handler: Annotated[DigitClassifier, Depends(get_handler)]) -> str:
    return handler.model(name)


async def versioned_model(name: Annotated[str, Depends(served_model)], version: str) -> str:
    """The ``/versions/{version}`` routes serve the one version there is."""
    check_version(name, version)
    return name


def _add_model_routes(path: str, model: Callable[..., Any]) -> None:
    """Metadata, readiness and inference of one model; registered without and with a version."""
    Model = Annotated[str, Depends(model)]  # noqa: N806 - a type alias

    @router.get(path, response_model=V2ModelMetadata)
    async def model_metadata(name: Model) -> V2ModelMetadata:
        return V2ModelMetadata(
            name=name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[V2TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in INPUTS],
            outputs=[V2TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in OUTPUTS],
        )

    @router.get(f"{path}/ready", response_model=V2ModelReady, responses={400: {"model": V2ModelReady}})
    async def model_ready(name: Model, handler: Annotated[DigitClassifier, Depends(get_handler)]) -> V2ModelReady | JSONResponse:
        if not handler.backend.status().ready:
            return JSONResponse(V2ModelReady(name=name, ready=False).model_dump(), status_code=400)
        return V2ModelReady(name=name, ready=True)

    @router.post(
        f"{path}/infer",
        response_model=V2InferenceResponse,
        responses={401: {"model": V2Error}},
        # The body is parsed by hand, so it is documented here; the app adds its schema to the components.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": INFER_SCHEMA}}},
            }
        },
    )
    async def infer(request: Request, handler: Annotated[DigitClassifier, Depends(serving_handler)], name: Model) -> Response:
        """Probabilities and labels for a batch of 28x28 images (an all-zero image is not a digit)."""
        body, binary = await read_infer_request(request)
        if len(body.inputs) != 1:
            raise InputError(f"expected exactly one input tensor, got {len(body.inputs)}", 400)
        requested = requested_outputs(body)
        images = to_images(body.inputs[0], binary, handler.settings.max_images_per_request)
        request.state.model = name
        request.state.images = len(images)
        return encode_outputs(body, requested, name, await handler.predict(name, Images.of(images), departure_of(request.scope)))


_add_model_routes("/models/{name}", served_model)
_add_model_routes("/models/{name}/versions/{version}", versioned_model)
