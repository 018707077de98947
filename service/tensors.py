"""The tensors of the Open Inference Protocol (KServe V2), the same over REST and gRPC.

Input: one tensor, FP32 intensities in [0, 1] or UINT8 0-255, shape [N, 1, 28, 28] or
[N, 28, 28], white digit on black, already 28x28 (the server normalises). Outputs:
``probabilities`` FP32 [N, 10], ``label`` INT64 [N] and ``is_digit`` BOOL [N]. Each protocol
reads the input's values from its own encoding and writes the outputs in its own; what the
tensors are, how they are checked and the messages a client gets are here, so that REST and
gRPC answer the same request alike.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError
from service.handler import Classification

__all__ = [
    "DTYPES",
    "INPUTS",
    "MODEL_VERSION",
    "OUTPUTS",
    "OUTPUT_NAMES",
    "PLATFORM",
    "SERVER_NAME",
    "InputTensor",
    "TensorMetadata",
    "check_version",
    "output_arrays",
    "select_outputs",
]

SERVER_NAME = "digits"
PLATFORM = "pytorch"
MODEL_VERSION = "1"
# Little-endian, as the protocol's binary and raw tensor data are.
DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1"), "INT64": np.dtype("<i8"), "BOOL": np.dtype("?")}


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


INPUTS = (TensorMetadata("input", "FP32", (-1, 1, 28, 28)),)
OUTPUTS = (
    TensorMetadata("probabilities", "FP32", (-1, 10)),
    TensorMetadata("label", "INT64", (-1,)),
    TensorMetadata("is_digit", "BOOL", (-1,)),
)
OUTPUT_NAMES = tuple(output.name for output in OUTPUTS)


def check_version(model: str, version: str | None) -> None:
    """A request may name no version (None or "") or the one there is; another is a 404."""
    if version and version != MODEL_VERSION:
        raise InputError(f"model {model!r} has no version {version!r}; available: {MODEL_VERSION}", status_code=404)


@dataclass(frozen=True)
class InputTensor:
    """An input tensor's name, datatype and shape: checked before its values are read."""

    name: str
    datatype: str
    shape: Sequence[int]

    def check(self, max_images: int) -> None:
        shape = list(self.shape)
        if len(shape) not in (3, 4) or shape[-2:] != [28, 28] or (len(shape) == 4 and shape[1] != 1) or shape[0] < 1:
            raise InputError(f"input {self.name!r} has shape {shape}; expected [N, 1, 28, 28] or [N, 28, 28] with N >= 1", 400)
        if shape[0] > max_images:
            raise InputError(f"input {self.name!r} holds {shape[0]} images, above the limit of {max_images}", 413)
        if self.datatype not in ("FP32", "UINT8"):
            raise InputError(f"input {self.name!r} has datatype {self.datatype}; expected FP32 or UINT8", 400)

    def from_bytes(self, data: bytes) -> np.ndarray:
        """The values of row-major little-endian tensor bytes, flat (the datatype is checked)."""
        dtype = DTYPES[self.datatype]
        if len(data) % dtype.itemsize:
            raise InputError(f"input {self.name!r}: {len(data)} bytes is not a whole number of {self.datatype} values", 400)
        return np.frombuffer(data, dtype)

    def images(self, values: np.ndarray) -> np.ndarray:
        """N x 1 x 28 x 28 float32 in [0, 1] from the flat values (the tensor is checked)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        expected = math.prod(self.shape)
        if values.size != expected:
            raise InputError(f"input {self.name!r}: shape {list(self.shape)} needs {expected} values, got {values.size}", 400)
        if not np.isfinite(values).all():
            raise InputError(f"input {self.name!r} contains NaN or infinity", 400)
        if self.datatype == "UINT8":
            if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
                raise InputError(f"input {self.name!r}: UINT8 data must be integers in 0..255", 400)
            values = values / 255.0
        elif values.min() < 0 or values.max() > 1:
            raise InputError(f"input {self.name!r}: FP32 data must be intensities in [0, 1]", 400)
        return values.astype(np.float32).reshape(self.shape[0], 1, 28, 28)


def select_outputs(names: Sequence[str]) -> list[str]:
    """The outputs asked for, in that order, each once; all of them when none are named."""
    chosen = list(dict.fromkeys(names)) or list(OUTPUT_NAMES)
    unknown = sorted(set(chosen) - set(OUTPUT_NAMES))
    if unknown:
        raise InputError(f"unknown output(s) {', '.join(unknown)}; available: {', '.join(OUTPUT_NAMES)}", 400)
    return chosen


def output_arrays(result: Classification) -> dict[str, tuple[str, np.ndarray]]:
    """Every output by name: its datatype and its values in that datatype's dtype."""
    values = {"probabilities": result.probabilities, "label": result.labels, "is_digit": result.is_digit}
    return {output.name: (output.datatype, values[output.name].astype(DTYPES[output.datatype])) for output in OUTPUTS}
