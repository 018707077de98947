"""What is served and whether it can serve: /model-info, liveness, readiness, /metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from core.spec import CLASSES, INPUT_SHAPE
from service import __version__
from service.dependencies import get_handler, ready_handler
from service.handler import DigitClassifier
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.schemas import BatchingInfo, ErrorResponse, HealthResponse, ModelInfo, ModelInfoResponse

__all__ = ["router"]

router = APIRouter()


@router.get("/model-info", response_model=ModelInfoResponse, tags=["info"])
async def model_info(handler: Annotated[DigitClassifier, Depends(get_handler)]) -> ModelInfoResponse:
    """What is served: architectures, weights, accuracy, calibration, batching."""
    settings = handler.settings
    served = await handler.backend.describe()
    return ModelInfoResponse(
        default_model=settings.default_model,
        models=[ModelInfo(input_shape=list(INPUT_SHAPE), classes=list(CLASSES), **card) for card in served["models"]],
        batching=BatchingInfo(
            max_batch_size=served["max_batch_size"],
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_images=served["max_queue_images"],
            request_timeout_s=settings.request_timeout_s,
            workers=settings.workers,
        ),
        settings=settings.public(),
        device=served["device"],
        service_version=__version__,
        torch_version=served["torch_version"],
    )


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers HTTP."""
    return HealthResponse(status="alive")


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}}, tags=["health"])
async def readyz(handler: Annotated[DigitClassifier, Depends(ready_handler)]) -> HealthResponse:
    """Readiness: every model loaded and warmed, every worker up, and not shutting down."""
    return HealthResponse(status="ready", detail=handler.backend.status().detail)


@router.get("/metrics", tags=["health"], response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
