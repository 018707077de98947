"""The FastAPI app: its backend's lifespan, middleware and routers; the work lives in the modules they call."""

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__, tracing
from service.api import info, page, predict, read, repository, v2
from service.api.errors import register_error_handlers
from service.config import Settings
from service.handler import DigitClassifier
from service.inference.remote import RemoteBackend
from service.metrics import Metrics
from service.middleware import AccessLogMiddleware, BodyLimitMiddleware
from service.schemas import PredictJSONRequest, V2InferenceRequest

__all__ = ["create_app"]

Backend = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[None]:
    """The models in this process: loaded here, warmed in the background (readiness waits for it)."""
    from service.inference.engine import Engine  # torch: only a single-process server imports it

    engine = Engine(app.state.settings, app.state.metrics)  # a bad checkpoint stops startup here
    await engine.start()
    engine.reload_on_sighup()
    app.state.handler = DigitClassifier(engine, app.state.settings)
    warm_up = asyncio.create_task(engine.warm_up())
    try:
        yield
    finally:
        engine.begin_draining()
        warm_up.cancel()
        await engine.stop()


def in_inference_process(socket_path: Path) -> Backend:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The models in the inference process: connected to in the background (readiness waits for it)."""
        backend = RemoteBackend(socket_path)
        app.state.handler = DigitClassifier(backend, app.state.settings)
        connecting = asyncio.create_task(backend.connect())
        await backend.wait_first_contact()  # a replacement worker takes requests only once it can answer them
        try:
            yield
        finally:
            backend.begin_draining()
            connecting.cancel()
            await backend.close()

    return lifespan


def _document_hand_parsed_bodies(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the schemas of bodies that routes parse themselves (/predict, V2 infer) to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, definitions = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, inference_socket: Path | None = None) -> FastAPI:
    """The app; its models live in this process, or in the inference process at ``inference_socket``."""
    settings = settings or Settings()
    backend = in_process if inference_socket is None else in_inference_process(inference_socket)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with backend(app):
            # What exists now (framework, models) lives as long as the process: frozen, the
            # cyclic GC never rescans it, and a full collection under load is a latency spike.
            gc.freeze()
            # A request allocates hundreds of containers, so at the default threshold (700) the
            # youngest generation is collected every request or two, and the oldest every hundred
            # of those. Collected every 50,000, one worker's c32 p99 fell from
            # 43-46 ms to 21-25 ms (bench/README.md, "Design decisions"). Request bodies sit in
            # no reference cycle (service.uploads), so waiting longer holds no upload's bytes.
            gc.set_threshold(50_000, 20, 20)
            try:
                yield
            finally:
                tracing.shutdown()  # the spans still buffered are exported before the process ends

    tracing.configure("server" if inference_socket is None else "http-worker")
    app = FastAPI(
        title="Digit recogniser",
        # FastAPI's own OpenTelemetry server span per request (once service.tracing has set a
        # provider); the stages beneath it are service.tracing's, metrics are Prometheus'.
        telemetry={"metrics": False, "logs": False, "operation_spans": False},
        version=__version__,
        description="Handwritten digit classification (MNIST) with two course CNNs and their ensemble.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    register_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=app.state.metrics)
    for router in (predict.router, read.router, info.router, v2.router, repository.router, page.router):
        app.include_router(router)
    _document_hand_parsed_bodies(app, [PredictJSONRequest, V2InferenceRequest])
    return app
