"""Reading and verifying the committed weights and their metadata.

Every checkpoint is a plain state_dict loaded with ``weights_only=True`` (no arbitrary
unpickling) and only after its sha256 matches the metadata written beside it, so a
tampered or half-copied file stops the program instead of serving wrong answers.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.calibration import CalibratedClassifier, Ensemble
from models.registry import ARCHITECTURES, ENSEMBLE, build

__all__ = [
    "CheckpointError",
    "load_classifier",
    "load_ensemble",
    "metadata_path",
    "read_metadata",
    "sha256_file",
    "weights_path",
]


class CheckpointError(RuntimeError):
    """A checkpoint or its metadata is missing, unreadable or does not match."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(weights_dir: Path, name: str) -> Path:
    return weights_dir / f"{name}.pt"


def metadata_path(weights_dir: Path, name: str) -> Path:
    return weights_dir / f"{name}.json"


def read_metadata(weights_dir: Path, name: str) -> dict[str, Any]:
    path = metadata_path(weights_dir, name)
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"metadata file {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"metadata file {path} is unreadable: {exc}") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"metadata file {path} does not hold a JSON object")
    return metadata


def _load_state_dict(weights_dir: Path, name: str, metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = weights_path(weights_dir, name)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    expected = metadata.get("sha256")
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"weights file {path} has sha256 {actual}, but {metadata_path(weights_dir, name)} says {expected}")
    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"weights file {path} cannot be loaded: {exc}") from None
    return state


def load_classifier(weights_dir: Path, name: str) -> tuple[CalibratedClassifier, dict[str, Any]]:
    """A verified, calibrated network in eval mode on the CPU, with its metadata."""
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {name!r}")
    metadata = read_metadata(weights_dir, name)
    net = build(name)
    try:
        net.load_state_dict(_load_state_dict(weights_dir, name, metadata))
    except RuntimeError as exc:
        raise CheckpointError(f"weights file {weights_path(weights_dir, name)} does not fit {name}: {exc}") from None
    temperature = float(metadata.get("calibration", {}).get("temperature", 1.0))
    return CalibratedClassifier(net, temperature).eval(), metadata


def load_ensemble(weights_dir: Path, members: dict[str, nn.Module], member_sha256: dict[str, str]) -> tuple[Ensemble, dict[str, Any]]:
    """The ensemble over already loaded members; its metadata must name their exact weights."""
    metadata = read_metadata(weights_dir, ENSEMBLE)
    recorded = metadata.get("members", {})
    if recorded != member_sha256:
        raise CheckpointError(
            f"{metadata_path(weights_dir, ENSEMBLE)} was calibrated for members {recorded}, "
            f"but the loaded weights are {member_sha256}; rerun training to recalibrate"
        )
    temperature = float(metadata.get("calibration", {}).get("temperature", 1.0))
    ordered = [members[name] for name in recorded]
    return Ensemble(ordered, temperature).eval(), metadata
