"""Open Inference Protocol (KServe V2) REST endpoints, batched through the same batchers.

Input: one tensor, FP32 intensities in [0, 1] or UINT8 0-255, shape [N, 1, 28, 28] or
[N, 28, 28], white digit on black, already 28x28 (the server normalises). Output:
``probabilities`` FP32 [N, 10] and ``label`` INT64 [N]. Errors are ``{"error": "..."}``.
"""

import math
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service import __version__
from service.dependencies import get_runtime, ready_runtime, require_api_key
from service.errors import InputError, invalid_body
from service.runtime import Runtime
from service.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2InputTensor,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2OutputTensor,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
)

__all__ = ["router", "to_tensor"]

MODEL_VERSION = "1"
OUTPUTS = ("probabilities", "label")
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": V2Error} for code in (400, 404, 413, 503)}


def _model(name: str, runtime: Annotated[Runtime, Depends(get_runtime)]) -> str:
    if name not in runtime.models:
        raise InputError(f"unknown model {name!r}; available: {', '.join(runtime.models)}", status_code=404)
    return name


def _versioned_model(name: Annotated[str, Depends(_model)], version: str) -> str:
    """The ``/versions/{version}`` routes serve the one version there is."""
    if version != MODEL_VERSION:
        raise InputError(f"model {name!r} has no version {version!r}; available: {MODEL_VERSION}", status_code=404)
    return name


def to_tensor(tensor: V2InputTensor, max_images: int) -> torch.Tensor:
    """N x 1 x 28 x 28 float32 in [0, 1] from a V2 input tensor, or an InputError (400)."""
    shape = tensor.shape
    if len(shape) not in (3, 4) or list(shape[-2:]) != [28, 28] or (len(shape) == 4 and shape[1] != 1) or shape[0] < 1:
        raise InputError(f"input {tensor.name!r} has shape {shape}; expected [N, 1, 28, 28] or [N, 28, 28] with N >= 1", 400)
    if shape[0] > max_images:
        raise InputError(f"input {tensor.name!r} holds {shape[0]} images, above the limit of {max_images}", 413)
    if tensor.datatype not in ("FP32", "UINT8"):
        raise InputError(f"input {tensor.name!r} has datatype {tensor.datatype}; expected FP32 or UINT8", 400)
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"input {tensor.name!r}: data must be numbers, flat or nested row-major", 400) from None
    expected = math.prod(shape)
    if values.size != expected:
        raise InputError(f"input {tensor.name!r}: shape {shape} needs {expected} values, got {values.size}", 400)
    if not np.isfinite(values).all():
        raise InputError(f"input {tensor.name!r} contains NaN or infinity", 400)
    if tensor.datatype == "UINT8":
        if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
            raise InputError(f"input {tensor.name!r}: UINT8 data must be integers in 0..255", 400)
        values = values / 255.0
    elif values.min() < 0 or values.max() > 1:
        raise InputError(f"input {tensor.name!r}: FP32 data must be intensities in [0, 1]", 400)
    return torch.from_numpy(values.astype(np.float32).reshape(shape[0], 1, 28, 28))


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], responses=ERRORS)


@router.get("/health/live", response_model=V2Live)
async def live() -> V2Live:
    return V2Live(live=True)


@router.get("/health/ready", response_model=V2Ready, responses={400: {"model": V2Ready}})
async def ready(runtime: Annotated[Runtime, Depends(get_runtime)]) -> V2Ready | JSONResponse:
    """200 when every model is loaded and warmed; 400 (the protocol's "false") otherwise."""
    if not runtime.ready:
        return JSONResponse(V2Ready(ready=False).model_dump(), status_code=400)
    return V2Ready(ready=True)


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="digits", version=__version__, extensions=[])


@router.get("/models/{name}", response_model=V2ModelMetadata)
async def model_metadata(name: Annotated[str, Depends(_model)]) -> V2ModelMetadata:
    return V2ModelMetadata(
        name=name,
        versions=[MODEL_VERSION],
        platform="pytorch",
        inputs=[V2TensorMetadata(name="input", datatype="FP32", shape=[-1, 1, 28, 28])],
        outputs=[
            V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, 10]),
            V2TensorMetadata(name="label", datatype="INT64", shape=[-1]),
        ],
    )


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses={400: {"model": V2ModelReady}})
async def model_ready(
    name: Annotated[str, Depends(_model)], runtime: Annotated[Runtime, Depends(get_runtime)]
) -> V2ModelReady | JSONResponse:
    if not runtime.ready:
        return JSONResponse(V2ModelReady(name=name, ready=False).model_dump(), status_code=400)
    return V2ModelReady(name=name, ready=True)


INFER_OPTIONS: dict[str, Any] = {
    "response_model": V2InferenceResponse,
    "response_model_exclude_none": True,
    "dependencies": [Depends(require_api_key)],
    "responses": {401: {"model": V2Error}},
    # The body is parsed by hand (V2 clients send it as JSON without saying so), so it is
    # documented here; the schema itself is added to the components by the app.
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}}}}
    },
}


@router.post("/models/{name}/infer", **INFER_OPTIONS)
async def infer(
    request: Request, name: Annotated[str, Depends(_model)], runtime: Annotated[Runtime, Depends(ready_runtime)]
) -> V2InferenceResponse:
    """Probabilities and labels for a batch of 28x28 images.

    The body is JSON whatever its Content-Type says: tritonclient sends none, its aiohttp
    client sends application/octet-stream. The binary tensor extension is not supported.
    """
    if "inference-header-content-length" in request.headers:
        raise InputError("binary tensor data is not supported; send every tensor as JSON", 400)
    try:
        body = V2InferenceRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_body(exc, status_code=400) from None
    if len(body.inputs) != 1:
        raise InputError(f"expected exactly one input tensor, got {len(body.inputs)}", 400)
    wanted = [output.name for output in body.outputs] if body.outputs else list(OUTPUTS)
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise InputError(f"unknown output(s) {', '.join(unknown)}; available: {', '.join(OUTPUTS)}", 400)
    images = to_tensor(body.inputs[0], runtime.settings.max_images_per_request)
    request.state.model = name
    request.state.images = len(images)
    probabilities = await runtime.predict(name, images)
    tensors = {
        "probabilities": V2OutputTensor(
            name="probabilities", shape=list(probabilities.shape), datatype="FP32", data=probabilities.reshape(-1).tolist()
        ),
        "label": V2OutputTensor(name="label", shape=[len(probabilities)], datatype="INT64", data=probabilities.argmax(1).tolist()),
    }
    return V2InferenceResponse(model_name=name, model_version=MODEL_VERSION, id=body.id, outputs=[tensors[n] for n in wanted])


# The same endpoints under /versions/{version}, which V2 clients use when given a version.


@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata)
async def versioned_model_metadata(name: Annotated[str, Depends(_versioned_model)]) -> V2ModelMetadata:
    return await model_metadata(name)


@router.get("/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses={400: {"model": V2ModelReady}})
async def versioned_model_ready(
    name: Annotated[str, Depends(_versioned_model)], runtime: Annotated[Runtime, Depends(get_runtime)]
) -> V2ModelReady | JSONResponse:
    return await model_ready(name, runtime)


@router.post("/models/{name}/versions/{version}/infer", **INFER_OPTIONS)
async def versioned_infer(
    request: Request, name: Annotated[str, Depends(_versioned_model)], runtime: Annotated[Runtime, Depends(ready_runtime)]
) -> V2InferenceResponse:
    return await infer(request, name, runtime)
