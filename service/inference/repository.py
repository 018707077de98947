"""New weights without a restart: a candidate set is loaded and verified beside the served one.

A load re-reads the whole weights directory, because the ensemble is calibrated for its
members' exact files (``models.checkpoint.load_ensemble`` checks their sha256): a member's
new weights come with the ensemble's new metadata, and the two are swapped together. A
candidate is served only once it has passed every check on the inference thread:

1. every file's sha256 matches its metadata and its tensors fit the architecture;
2. its warm-up passes run (CUDA graphs captured where there is a GPU);
3. each model reads at least ``SMOKE_MIN_ACCURACY`` of the smoke batch (``smoke``).

A candidate that fails any of them is refused with the reason, and the served set is left
as it was. The swap itself is one assignment per model on the event loop: a pass that has
started finishes on the weights it started with, every later pass uses the new ones.
"""

from dataclasses import dataclass

import numpy as np

from service.errors import LoadRefused
from service.inference.loader import ServedModel
from service.inference.smoke import SMOKE_MIN_ACCURACY, smoke_batch

__all__ = ["RepositoryEntry", "changed", "verify_smoke"]


@dataclass(frozen=True)
class RepositoryEntry:
    """One row of the model repository index, as Triton's ``/v2/repository/index`` has it."""

    name: str
    state: str  # READY or UNAVAILABLE
    reason: str
    sha256: str | None


def verify_smoke(models: dict[str, ServedModel]) -> dict[str, float]:
    """The share of the smoke batch each model reads; refuses the set when one reads too few."""
    images, labels = smoke_batch()
    read = {name: float(np.mean(model.forward(images).argmax(axis=1) == labels)) for name, model in models.items()}
    failing = {name: share for name, share in read.items() if share < SMOKE_MIN_ACCURACY}
    if failing:
        worst = ", ".join(f"{name} reads {share:.0%}" for name, share in failing.items())
        raise LoadRefused(
            f"the weights fail the smoke check ({worst} of {len(labels)} drawn digits; at least {SMOKE_MIN_ACCURACY:.0%} needed)"
        )
    return read


def changed(served: dict[str, ServedModel], candidate: dict[str, ServedModel]) -> list[str]:
    """The models whose weights or metadata differ between the two sets."""
    return [name for name, model in candidate.items() if name not in served or model.metadata != served[name].metadata]
