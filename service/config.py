"""Every setting of the service, read from the environment (prefix ``DIGITS_``).

``HOST`` and ``PORT`` are read without the prefix because container platforms set them.
Defaults protect a small server; raise them deliberately.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.registry import SERVED_MODELS

__all__ = ["Settings"]

ModelName = Literal["inception", "resnet", "ensemble"]
assert set(SERVED_MODELS) == set(ModelName.__args__)  # type: ignore[attr-defined]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    host: str = Field("0.0.0.0", validation_alias=AliasChoices("HOST", "DIGITS_HOST"), description="bind address")
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("PORT", "DIGITS_PORT"), description="bind port")

    weights_dir: Path = Field(Path(__file__).resolve().parent.parent / "weights", description="checkpoints and their metadata")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto picks CUDA, then MPS, then CPU")
    torch_threads: int = Field(0, ge=0, description="intra-op threads for forward passes; 0 = one per CPU core but one")
    event_loop_pass_images: int = Field(
        0, ge=0, description="passes of at most this many images run on the event loop, not the inference thread (CPU, one torch thread)"
    )
    default_model: ModelName = Field("ensemble", description="model used when a request names none")

    max_batch_size: int = Field(128, ge=1, description="most images in one forward pass; larger requests are split")
    max_batch_wait_ms: float = Field(0.0, ge=0, description="extra wait for a batch to fill once the model is free")
    max_queue_images: int = Field(2048, ge=1, description="images waiting per model before 503 Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="answer 503 when an inference waits longer")
    warmup_batches: int = Field(3, ge=1, description="forward passes per model and batch size before ready")

    max_images_per_request: int = Field(512, ge=1, description="413 above this many images")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1, description="413 above this many body bytes")
    max_file_bytes: int = Field(8 * 1024 * 1024, ge=1, description="413 above this many bytes in one image file")
    max_image_pixels: int = Field(25_000_000, ge=1, description="width x height above which an image is refused")

    api_key: SecretStr | None = Field(None, description="when set, /predict and /v2 need header X-API-Key")
    cors_origins: list[str] = Field(default_factory=list, description='JSON list of origins allowed by CORS, e.g. ["*"]')
    shutdown_grace_s: float = Field(20.0, ge=0, description="time to finish queued work after SIGTERM")
    fault_injection: bool = Field(False, description="test hook: enables POST /debug/fail-next-batch; never in production")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    def inference_threads(self) -> int:
        """One core is left to the event loop: HTTP, multipart and PNG decoding are Python
        work that would otherwise compete with torch's threads for the same cores."""
        return self.torch_threads or max(1, (os.cpu_count() or 1) - 1)

    def public(self) -> dict[str, object]:
        """The settings safe to show in /model-info (no secrets)."""
        shown = self.model_dump(exclude={"api_key", "host"})
        shown["weights_dir"] = str(self.weights_dir.name)
        shown["api_key_required"] = self.api_key is not None
        return shown
