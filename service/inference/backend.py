"""The inference backend as the HTTP side sees it: torch-free, in-process or remote alike."""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["BackendStatus", "InferenceBackend"]


@dataclass(frozen=True)
class BackendStatus:
    ready: bool
    draining: bool
    detail: str  # why not ready, or what is served
    weights_generation: int = 0  # counts the loads that swapped weights: model cards read before it are stale

    @property
    def reason(self) -> str:
        return "the service is shutting down" if self.draining else self.detail


class InferenceBackend(Protocol):
    """Probabilities for 28x28 images, batched with every other caller's."""

    def status(self) -> BackendStatus:
        """Readiness, answered locally: it is checked on every request."""
        ...

    def begin_draining(self) -> None:
        """Readiness off at once; work already accepted is still answered."""
        ...

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        """N x 10 float32 calibrated probabilities for N x 1 x 28 x 28 float32 intensities in [0, 1].

        Raises ``Overloaded`` when the model's queue is full or the backend is gone.
        """
        ...

    async def describe(self) -> dict[str, Any]:
        """JSON-able: ``models`` (one card each, with live batching statistics), ``device``,
        ``max_batch_size`` and ``torch_version``."""
        ...

    async def load(self, model: str) -> list[str]:
        """Serve the weights on disk for ``model`` once verified (``service.inference.repository``);
        the models swapped. Raises ``LoadRefused`` and keeps serving the old weights when they fail."""
        ...

    async def unload(self, model: str) -> None:
        """``model`` answers 404 until it is loaded again."""
        ...

    async def repository_index(self) -> list[dict[str, Any]]:
        """One ``RepositoryEntry`` per model, as JSON."""
        ...
