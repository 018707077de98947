"""Every setting of the service, read from the environment (prefix ``DIGITS_``).

``HOST`` and ``PORT`` are read without the prefix because container platforms set them.
Defaults protect a small server; raise them deliberately.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

import weights
from core.spec import SERVED_MODELS

__all__ = ["Settings"]

ModelName = Literal["inception", "resnet", "ensemble"]
assert set(SERVED_MODELS) == set(ModelName.__args__)  # type: ignore[attr-defined]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    host: str = Field("0.0.0.0", validation_alias=AliasChoices("HOST", "DIGITS_HOST"), description="bind address")
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("PORT", "DIGITS_PORT"), description="bind port")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="Open Inference Protocol over gRPC, on the same host, shared by every HTTP worker; 0 = off"
    )

    workers: int = Field(1, ge=1, description="HTTP worker processes; above 1, one more process runs the models for all of them")
    # Above 1 worker the supervisor replaces a child process that dies or hangs.
    heartbeat_timeout_s: float = Field(
        10.0, gt=0, description="a child process whose event loop has not beaten for this long is hung: killed (SIGKILL) and replaced"
    )
    startup_timeout_s: float = Field(
        120.0, gt=0, description="a child process that has not begun beating this long after its start is hung: killed and replaced"
    )
    max_restarts_per_minute: int = Field(
        10, ge=0, description="child restarts within 60 s beyond which the whole tree stops and exits 1; 0 = any child's death stops it"
    )
    weights_dir: Path = Field(weights.DIRECTORY, description="checkpoints and their metadata (default: the ones the package ships)")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto picks CUDA, then MPS, then CPU")
    torch_threads: int = Field(0, ge=0, description="intra-op threads for forward passes; 0 = one per CPU core not left to an HTTP worker")
    default_model: ModelName = Field("ensemble", description="model used when a request names none")
    model_control: Literal["none", "explicit"] = Field(
        "none", description="explicit: /v2/repository loads (and SIGHUP reloads) new weights from weights_dir without a restart"
    )

    max_batch_size: int = Field(
        0, ge=0, description="most images in one forward pass (larger requests are split); 0 = 128 on a CPU, 2048 on a GPU"
    )
    max_batch_wait_ms: float = Field(0.0, ge=0, description="extra wait for a batch to fill once the model is free")
    max_queue_images: int = Field(0, ge=0, description="images waiting per model before 503 Retry-After; 0 = 16 x the max batch size")
    request_timeout_s: float = Field(30.0, gt=0, description="answer 503 when an inference waits longer")
    warmup_batches: int = Field(3, ge=1, description="forward passes per model and batch size before ready")

    max_images_per_request: int = Field(512, ge=1, description="413 above this many images")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1, description="413 above this many body bytes")
    max_file_bytes: int = Field(8 * 1024 * 1024, ge=1, description="413 above this many bytes in one image file")
    max_image_pixels: int = Field(25_000_000, ge=1, description="width x height above which an image is refused")

    header_timeout_s: float = Field(10.0, gt=0, description="408 and close when a request's headers take longer from its first byte")
    body_timeout_s: float = Field(10.0, gt=0, description="408 and close when a request body stalls this long between chunks")
    keep_alive_s: float = Field(5.0, gt=0, description="close a keep-alive connection idle this long between requests")
    max_connections: int = Field(
        2048, ge=1, description="open connections per HTTP worker above which a request is answered 503 Retry-After"
    )

    api_key: SecretStr | None = Field(None, description="when set, /predict and /v2 need header X-API-Key")
    cors_origins: list[str] = Field(default_factory=list, description='JSON list of origins allowed by CORS, e.g. ["*"]')
    shutdown_grace_s: float = Field(20.0, ge=0, description="time to finish queued work after SIGTERM")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    def inference_threads(self) -> int:
        """One core per HTTP worker is left to it: HTTP, multipart and image decoding are
        Python work that would otherwise compete with torch's threads for the same cores."""
        return self.torch_threads or max(1, (os.cpu_count() or 1) - self.workers)

    def spare_passes(self, device_type: str) -> int:
        """Passes of large requests' batches that may run beside the main one, a torch thread
        each, on the cores left to HTTP (``service.inference.batching``); none on a GPU."""
        return 0 if device_type != "cpu" else max(0, (os.cpu_count() or 1) - self.inference_threads())

    def batch_limit(self, device_type: str) -> int:
        """A GPU pass costs about the same from 1 to thousands of images; a CPU pass grows with the batch."""
        return self.max_batch_size or (2048 if device_type == "cuda" else 128)

    def queue_limit(self, device_type: str) -> int:
        return self.max_queue_images or 16 * self.batch_limit(device_type)

    def public(self) -> dict[str, object]:
        """The settings safe to show in /model-info (no secrets)."""
        shown = self.model_dump(exclude={"api_key", "host"})
        shown["weights_dir"] = str(self.weights_dir.name)
        shown["api_key_required"] = self.api_key is not None
        return shown
