"""What /model-info reports: the served models' metadata, device and batching statistics."""

import torch

from models.registry import CLASSES, INPUT_SHAPE
from service import __version__
from service.runtime import Runtime
from service.schemas import BatchingInfo, ModelInfo, ModelInfoResponse, WeightsInfo

__all__ = ["describe"]


def describe(runtime: Runtime) -> ModelInfoResponse:
    settings = runtime.settings
    models = []
    for name, served in runtime.models.items():
        meta = served.metadata
        stats = runtime.batchers[name].stats
        models.append(
            ModelInfo(
                name=name,
                architecture=meta["architecture"],
                parameters=meta["parameters"],
                macs_per_image=meta["macs_per_image"],
                input_shape=list(INPUT_SHAPE),
                classes=list(CLASSES),
                device=str(served.device),
                dtype=str(torch.float32).removeprefix("torch."),
                weights=WeightsInfo(file=served.weights_file, sha256=served.sha256, members=meta.get("members")),
                metrics={k: v for k, v in meta["metrics"].items() if k != "confusion_matrix"},
                calibration=meta["calibration"],
                recipe=meta.get("recipe"),
                batches=stats.batches,
                images=stats.images,
                mean_batch_size=round(stats.mean_batch_size, 3),
                largest_batch=stats.largest_batch,
            )
        )
    return ModelInfoResponse(
        default_model=settings.default_model,
        models=models,
        batching=BatchingInfo(
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_images=settings.max_queue_images,
            request_timeout_s=settings.request_timeout_s,
            event_loop_pass_images=runtime.event_loop_pass_images,
        ),
        settings=settings.public(),
        service_version=__version__,
        torch_version=torch.__version__,
    )
