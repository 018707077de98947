"""The Open Inference Protocol over gRPC (KServe's ``inference.GRPCInferenceService``), beside uvicorn.

Each HTTP worker process runs one ``grpc.aio`` server on its event loop, bound to
``DIGITS_GRPC_PORT`` with SO_REUSEPORT, so that N workers share the port and the kernel
spreads connections across them. It serves what V2 REST serves, through the same handler
and the same tensor checks (``service.tensors``): one input as ``raw_input_contents`` (what
tritonclient.grpc sends) or as typed ``contents``, answered in the same form. A request that
names no model gets the default one.

Errors are status codes carrying REST's messages: 404 is NOT_FOUND, 401 UNAUTHENTICATED (the
API key goes in metadata ``x-api-key``), every other 4xx INVALID_ARGUMENT; not ready,
draining or overloaded is UNAVAILABLE with ``retry-after`` trailing metadata, as REST's 503
has Retry-After. ModelInfer needs the API key when one is set; health and metadata do not.

On a stop signal draining refuses new calls (UNAVAILABLE) while calls in flight finish, then
the server stops; a call that reaches it in the instant it stops is CANCELLED before any
handler sees it, as an HTTP request can meet a closing connection: both are safe to retry.
"""

import hmac
from collections.abc import Sequence
from typing import Never

import grpc
import numpy as np
from google.protobuf.internal.containers import RepeatedScalarFieldContainer

from core.errors import InputError
from service import __version__
from service.config import Settings
from service.errors import Overloaded
from service.grpc_v2 import grpc_predict_v2_pb2 as pb
from service.grpc_v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer, add_GRPCInferenceServiceServicer_to_server
from service.handler import Classification, DigitClassifier, Images
from service.tensors import (
    INPUTS,
    MODEL_VERSION,
    OUTPUTS,
    PLATFORM,
    SERVER_NAME,
    InputTensor,
    TensorMetadata,
    check_version,
    output_arrays,
    select_outputs,
)

__all__ = ["GrpcServer", "InferenceServicer"]

Context = grpc.aio.ServicerContext[object, object]
STATUS = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND}
API_KEY = "x-api-key"


async def _fail(context: Context, error: InputError | Overloaded) -> Never:
    """End the call with the error's status code and message (``abort`` raises)."""
    if isinstance(error, Overloaded):
        await context.abort(grpc.StatusCode.UNAVAILABLE, error.message, (("retry-after", str(error.retry_after_s)),))
    await context.abort(STATUS.get(error.status_code, grpc.StatusCode.INVALID_ARGUMENT), error.message)


Values = RepeatedScalarFieldContainer[float] | RepeatedScalarFieldContainer[int] | RepeatedScalarFieldContainer[bool]


def _contents(contents: pb.InferTensorContents, datatype: str) -> Values:
    """The typed field for values of a datatype served here: FP32, UINT8, INT64 or BOOL."""
    if datatype == "FP32":
        return contents.fp32_contents
    if datatype == "UINT8":
        return contents.uint_contents
    if datatype == "INT64":
        return contents.int64_contents
    return contents.bool_contents


def _read_input(request: pb.ModelInferRequest, max_images: int) -> np.ndarray:
    """N x 1 x 28 x 28 float32 in [0, 1] from the one input, raw or typed, or an InputError."""
    if len(request.inputs) != 1:
        raise InputError(f"expected exactly one input tensor, got {len(request.inputs)}", 400)
    tensor = request.inputs[0]
    header = InputTensor(tensor.name, tensor.datatype, tensor.shape)
    header.check(max_images)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InputError(f"raw_input_contents holds {len(request.raw_input_contents)} tensors for 1 input", 400)
        if tensor.HasField("contents"):
            raise InputError(f"input {tensor.name!r} has both contents and raw_input_contents; send one", 400)
        return header.images(header.from_bytes(request.raw_input_contents[0]))
    if not tensor.HasField("contents"):
        raise InputError(f"input {tensor.name!r} has neither contents nor raw_input_contents", 400)
    return header.images(np.asarray(_contents(tensor.contents, tensor.datatype), dtype=np.float64))


def _answer(request: pb.ModelInferRequest, model: str, outputs: Sequence[str], result: Classification) -> pb.ModelInferResponse:
    """The outputs asked for, raw when the input came raw, typed contents otherwise."""
    arrays = output_arrays(result)
    response = pb.ModelInferResponse(model_name=model, model_version=MODEL_VERSION, id=request.id)
    for name in outputs:
        datatype, array = arrays[name]
        output = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if request.raw_input_contents:
            response.raw_output_contents.append(array.tobytes())
        else:
            _contents(output.contents, datatype).extend(array.reshape(-1).tolist())
    return response


def _metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)


class InferenceServicer(GRPCInferenceServiceServicer):
    """The protocol's six calls around the handler; each method is named as the proto's rpc."""

    def __init__(self, handler: DigitClassifier, settings: Settings) -> None:
        self.handler = handler
        self.settings = settings

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        """True when every model is loaded and warmed; false while starting or draining."""
        return pb.ServerReadyResponse(ready=self.handler.backend.status().ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        try:
            model = self._model(request.name, request.version)
        except InputError as exc:
            await _fail(context, exc)
        return pb.ModelMetadataResponse(
            name=model,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[_metadata(tensor) for tensor in INPUTS],
            outputs=[_metadata(tensor) for tensor in OUTPUTS],
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        try:
            self._model(request.name, request.version)
        except InputError as exc:
            await _fail(context, exc)
        return pb.ModelReadyResponse(ready=self.handler.backend.status().ready)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        """In REST's order: the API key, the model, readiness, then the request's tensors."""
        try:
            self._authorise(context)
            model = self._model(request.model_name, request.model_version)
            status = self.handler.backend.status()
            if not status.ready:
                raise Overloaded(status.reason)
            outputs = select_outputs([output.name for output in request.outputs])
            images = _read_input(request, self.settings.max_images_per_request)
            result = await self.handler.predict(model, Images.of(images))
        except (InputError, Overloaded) as exc:
            await _fail(context, exc)
        return _answer(request, model, outputs, result)

    def _model(self, name: str, version: str) -> str:
        model = self.handler.model(name)
        check_version(model, version)
        return model

    def _authorise(self, context: Context) -> None:
        """When an API key is configured, metadata ``x-api-key`` must match it (constant-time)."""
        if self.settings.api_key is None:
            return
        given = next((str(value) for key, value in context.invocation_metadata() or () if key == API_KEY), "")
        if not hmac.compare_digest(given.encode(), self.settings.api_key.get_secret_value().encode()):
            raise InputError("missing or wrong API key: send it in the X-API-Key header", status_code=401)


class GrpcServer:
    """One gRPC server on this process's event loop, sharing its port with the other workers'."""

    def __init__(self, handler: DigitClassifier, settings: Settings) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),  # gRPC's default, relied on: every worker binds the same port
                ("grpc.max_receive_message_length", settings.max_request_bytes),  # REST's body limit
            ]
        )
        add_GRPCInferenceServiceServicer_to_server(InferenceServicer(handler, settings), self.server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.address = f"{host}:{settings.grpc_port}"

    async def start(self) -> None:
        """Bind and serve; a RuntimeError when the port cannot be bound."""
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls at once; calls in flight get ``grace_s`` to finish, then are cancelled."""
        await self.server.stop(grace_s)
