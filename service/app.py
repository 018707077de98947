"""The FastAPI app factory and its routes; the work itself lives in the modules it calls."""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from models.registry import SERVED_MODELS
from service import __version__, v2
from service.config import Settings
from service.dependencies import get_runtime, ready_runtime, require_api_key
from service.errors import InputError, Overloaded, error_body
from service.info import describe
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.middleware import AccessLogMiddleware, BodyLimitMiddleware
from service.pipeline import decode, encode, read_request
from service.runtime import Runtime
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelInfoResponse,
    PredictJSONRequest,
    PredictResponse,
    V2InferenceRequest,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# Up to this many bytes of images are decoded on the event loop (a 28x28 PNG takes ~50 us);
# more go to a worker thread so one large upload cannot stall other requests.
INLINE_DECODE_BYTES = 16 * 1024

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed body",
        401: "missing or wrong API key (only when one is configured)",
        404: "unknown model",
        413: "too many images, bytes or pixels",
        415: "unsupported media type",
        422: "an image is undecodable, blank or invalid",
        503: "not ready, overloaded or timed out (see Retry-After)",
    }.items()
}


def _predict_body(max_images: int) -> dict[str, Any]:
    """/predict parses its own body (multipart or JSON), so its schema is written here."""
    # No maxItems: the contract answers too many images with 413, not a schema violation's 422.
    files = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "minItems": 1,
        "description": f"image files; at most {max_images} per request (413 above)",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {"files": files}}},
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSONRequest"}},
            },
        }
    }


def _error(request: Request, status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, message), status_code=status, headers=headers)


def _register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(request, exc.status_code, exc.message)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(request, 503, exc.message, {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = ["{}: {}".format(" -> ".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()[:5]]
        status = 400 if request.url.path.startswith("/v2") else 422
        return _error(request, status, "; ".join(messages))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        """The client hung up mid-upload: nobody will read an answer, and it is not our fault."""
        return Response(status_code=499)


def _document_hand_parsed_bodies(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the schemas of bodies that routes parse themselves to the OpenAPI components.

    /predict (multipart or JSON) and V2 infer (JSON under any Content-Type) read their own
    bodies, so FastAPI does not collect these models; their requestBody entries refer to them.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, definitions = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, metrics)  # a bad checkpoint stops startup here
        await runtime.start()
        app.state.runtime = runtime
        # What exists now (framework, models) lives as long as the process. Frozen, the
        # cyclic GC never rescans it: a full collection took ~120 ms under load, which
        # was the p99 latency at concurrency 32 (bench/README.md).
        gc.freeze()
        warm_up = asyncio.create_task(runtime.warm_up())
        try:
            yield
        finally:
            runtime.begin_draining()
            warm_up.cancel()
            await runtime.stop()

    app = FastAPI(
        title="Digit recogniser",
        version=__version__,
        description="Handwritten digit classification (MNIST) with two course CNNs and their ensemble.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    _register_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=_predict_body(settings.max_images_per_request),
        tags=["predict"],
        dependencies=[Depends(require_api_key)],
    )
    async def predict(
        request: Request,
        runtime: Annotated[Runtime, Depends(ready_runtime)],
        model: Annotated[str | None, Query(description=f"one of {', '.join(SERVED_MODELS)}")] = None,
        include_input: Annotated[bool, Query(description="also return the 28x28 image the model saw")] = False,
    ) -> Response:
        """Classify one or more digit images (multipart parts named `files`, or JSON base64)."""
        name = model or settings.default_model
        if name not in runtime.models:
            raise InputError(f"unknown model {name!r}; available: {', '.join(runtime.models)}", status_code=404)
        request.state.model = name
        raw = await read_request(request, settings)
        if sum(len(image.data) for image in raw) <= INLINE_DECODE_BYTES:
            images = decode(raw, settings)  # a few small files: cheaper than a thread hand-off
        else:
            images = await anyio.to_thread.run_sync(decode, raw, settings, limiter=runtime.decode_limiter)
        request.state.images = len(images)
        probabilities = await runtime.predict(name, images)
        response = encode(name, probabilities, images if include_input else None)
        # Already validated: serialise once in pydantic-core instead of FastAPI re-validating.
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The draw-a-digit page: one self-contained HTML file, no external resources."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/model-info", response_model=ModelInfoResponse, tags=["info"])
    async def model_info(runtime: Annotated[Runtime, Depends(get_runtime)]) -> ModelInfoResponse:
        """What is served: architectures, weights, accuracy, calibration, batching."""
        return describe(runtime)

    @app.get("/healthz", response_model=HealthResponse, tags=["health"])
    async def healthz() -> HealthResponse:
        """Liveness: the process answers HTTP."""
        return HealthResponse(status="alive")

    @app.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}}, tags=["health"])
    async def readyz(runtime: Annotated[Runtime, Depends(ready_runtime)]) -> HealthResponse:
        """Readiness: every model loaded and warmed, and not shutting down."""
        return HealthResponse(status="ready", detail=", ".join(runtime.models))

    @app.get("/metrics", tags=["health"], response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(v2.router)
    _document_hand_parsed_bodies(app, [PredictJSONRequest, V2InferenceRequest])
    if settings.fault_injection:

        @app.post("/debug/fail-next-batch", include_in_schema=False)
        async def fail_next_batch(runtime: Annotated[Runtime, Depends(get_runtime)]) -> dict[str, int]:
            """Test hook: the next forward pass raises, failing exactly the requests batched into it."""
            runtime.faults_to_inject += 1
            return {"faults_to_inject": runtime.faults_to_inject}

    return app
