"""Load every checkpoint onto the device, verified, and make it ready to serve.

Startup fails with one message naming the file when weights are missing, corrupt or do
not match their metadata: a server that cannot answer correctly must not report ready.
"""

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.preprocess import PREPROCESSING_VERSION
from models.checkpoint import load_classifier, load_ensemble
from models.registry import ARCHITECTURES, ENSEMBLE, INPUT_SHAPE, MNIST_MEAN, MNIST_STD

__all__ = ["ServedModel", "batch_buckets", "check_preprocessing", "load_models", "select_device"]

log = logging.getLogger(__name__)


def select_device(preference: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; an explicit choice must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (preference == "cuda" and not cuda) or (preference == "mps" and not mps):
        raise RuntimeError(f"device {preference!r} was requested but is not available on this machine")
    return torch.device(preference)


def batch_buckets(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, which ends the list: one CUDA graph each."""
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return [*sizes, max_batch_size]


def _normalised(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return module((images - MNIST_MEAN) / MNIST_STD)


class _Pass(nn.Module):
    """Intensities in [0, 1] -> probabilities: the normalisation and the model, as one graph to trace."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _normalised(self.module, images)


TRACE_TOLERANCE = 1e-5  # the traced pass's largest difference from the eager one on a probe batch


def trace_cpu_pass(module: nn.Module) -> torch.jit.ScriptModule:
    """The CPU pass as one frozen TorchScript graph, checked against the eager pass.

    An eager pass hands the GIL back and takes it again around each of its ~100 operators;
    beside an event loop busy with HTTP each take can wait a switch interval (5 ms), so a
    pass in the inference thread slows several-fold. A traced graph runs its operators in C++
    with the GIL released once: beside a busy Python thread, 128 images took 4.8-7.1x less
    time traced than eager (``python -m bench.gil``, bench/results/gil-2core.json).
    """
    probe = torch.rand(5, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = _normalised(module, probe)
    with warnings.catch_warnings():  # torch marks TorchScript deprecated in favour of torch.compile, which needs a C++ compiler at start
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.freeze(torch.jit.trace(_Pass(module).eval(), probe))
    with torch.inference_mode():
        difference = float((traced(probe) - eager).abs().max())
    if not difference <= TRACE_TOLERANCE:
        raise ValueError(f"the traced pass differs from the eager one by {difference:.3g}")
    return traced


class CudaGraphs:
    """One captured CUDA graph per batch-size bucket, fed through pinned host memory.

    A pass of these small networks is a few dozen tiny kernels: launched one by one they
    cost ~1 ms whatever the batch, replayed as a graph a few microseconds. A batch runs in
    the smallest bucket that holds it (its tail rows hold stale inputs whose outputs are
    never read). Capture follows the CUDA-graphs recipe of the torch docs: warm-up passes
    on a side stream first, static input and output tensors reused by every replay.
    """

    def __init__(self, module: nn.Module, device: torch.device, max_batch_size: int) -> None:
        self.sizes = batch_buckets(max_batch_size)
        self.inputs = {size: torch.zeros(size, *INPUT_SHAPE, device=device) for size in self.sizes}
        self.host_in = torch.zeros(max_batch_size, *INPUT_SHAPE).pin_memory()
        self.host_out = torch.zeros(max_batch_size, 10).pin_memory()
        self.outputs: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for size in self.sizes:
                for _ in range(3):
                    _normalised(module, self.inputs[size])
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():
            for size in self.sizes:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.outputs[size] = _normalised(module, self.inputs[size]).float()
                self.graphs[size] = graph
        self.stream = torch.cuda.current_stream(device)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        count = len(images)
        size = next(s for s in self.sizes if s >= count)
        host_in = self.host_in[:count]
        host_in.numpy()[:] = images
        self.inputs[size][:count].copy_(host_in, non_blocking=True)
        self.graphs[size].replay()
        host_out = self.host_out[:count]
        host_out.copy_(self.outputs[size][:count], non_blocking=True)
        self.stream.synchronize()
        return host_out.numpy().copy()


@dataclass
class ServedModel:
    """A calibrated model on its device, with the metadata /model-info reports."""

    name: str
    module: nn.Module  # N x 1 x 28 x 28 normalised -> N x 10 probabilities
    metadata: dict[str, Any]
    device: torch.device
    weights_file: str | None
    sha256: str | None
    threads: int = 1  # torch intra-op threads on the CPU
    onednn_from: int | None = None  # on the CPU, passes of at least this many images run oneDNN's kernels
    graphs: CudaGraphs | None = field(default=None, repr=False)
    traced: torch.jit.ScriptModule | None = field(default=None, repr=False)

    def capture_graphs(self, max_batch_size: int) -> None:
        """On CUDA, capture a graph per batch bucket; passes then replay them.

        A capture that fails (a driver, an allocator or an operator that graphs do not support)
        leaves this model on eager passes, which compute the same outputs more slowly.
        """
        if self.device.type != "cuda":
            return
        try:
            self.graphs = CudaGraphs(self.module, self.device, max_batch_size)
        except Exception as exc:  # torch raises RuntimeError and driver-specific types alike
            self.graphs = None
            log.warning("CUDA graph capture failed for %s, serving it with eager passes: %s", self.name, exc)

    def trace(self) -> None:
        """On the CPU, trace the pass (``trace_cpu_pass``); passes then run the graph.

        A trace that fails or differs from the eager pass leaves this model on eager passes.
        """
        if self.device.type != "cpu":
            return
        try:
            self.traced = trace_cpu_pass(self.module)
        except Exception as exc:  # tracing raises RuntimeError, TracingCheckError and others
            self.traced = None
            log.warning("tracing failed for %s, serving it with eager passes: %s", self.name, exc)

    def forward(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Probabilities for N x 1 x 28 x 28 float32 intensities in [0, 1], on ``threads`` torch threads
        (default: the model's); runs in the engine's inference thread, or a spare one (one thread)."""
        if self.graphs is not None:
            return self.graphs(images)
        torch.set_num_threads(threads or self.threads)  # OpenMP keeps this per calling thread: set it where the pass runs
        if self.onednn_from is not None:
            # Process-wide: a pass beside one of another size (a spare pass runs beside the inference
            # thread's) may run some operators on the other kernels; both compute the same outputs.
            use_native_convolutions(len(images) < self.onednn_from)
        with torch.inference_mode():
            batch = torch.from_numpy(np.require(images, np.float32, ["C", "W"])).to(self.device, non_blocking=True)
            if self.traced is not None:
                return self.traced(batch).numpy()
            return _normalised(self.module, batch).float().cpu().numpy()


def device_failure(device: torch.device) -> str | None:
    """Why ``device`` can run no more passes, or None when it still can.

    A CUDA error raised by a kernel (an illegal address, a device-side assert, a lost GPU) is
    sticky: every later call in the process fails the same way, so a failed pass on CUDA is
    followed by a synchronisation and a tiny kernel to tell a dead device from a bad batch.
    """
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as exc:  # torch.AcceleratorError, RuntimeError: whatever the driver reports
        message = str(exc).strip()
        return message.splitlines()[0] if message else type(exc).__name__
    return None


def load_models(weights_dir: Path, device: torch.device, threads: int = 1, onednn_from: int | None = None) -> dict[str, ServedModel]:
    """The served models on ``device``; on the CPU their passes run the native convolution kernels,
    and with ``onednn_from`` (the engine gives its batch limit) passes of that many images or
    more run oneDNN's (``use_native_convolutions``)."""
    if device.type == "cpu":
        use_native_convolutions()
    else:
        onednn_from = None
    members = {name: load_classifier(weights_dir, name) for name in ARCHITECTURES}
    served = {
        name: ServedModel(name, module.to(device), meta, device, f"{name}.pt", meta["sha256"], threads, onednn_from)
        for name, (module, meta) in members.items()
    }
    ensemble, meta = load_ensemble(
        weights_dir,
        {name: model.module for name, model in served.items()},
        {name: model.sha256 for name, model in served.items() if model.sha256},
    )
    served[ENSEMBLE] = ServedModel(ENSEMBLE, ensemble.to(device), meta, device, None, None, threads, onednn_from)
    for model in served.values():
        log.info("loaded %s on %s (%s)", model.name, device, model.sha256 or "members " + ", ".join(meta["members"]))
        check_preprocessing(model.name, model.metadata)
    return served


def use_native_convolutions(native: bool = True) -> None:
    """CPU passes run PyTorch's own convolution kernels, not oneDNN's (a process-wide switch;
    ``native=False`` turns oneDNN on).

    oneDNN compiles and caches kernels for every input shape it meets, and dynamic batching
    makes up to ``max_batch_size`` shapes per model: after one pass of every size from 1 to
    128 through the three models, a process held 658-800 MB with oneDNN and 355-361 MB without
    (torch's CPU build), so a long-running server would grow with the variety of its batch
    sizes. The native kernels run a batch of 1 1.5-1.7x faster; from a batch of 8 up oneDNN's
    are faster, up to 1.6x for the residual net at 128 (``python -m bench.kernels``,
    bench/results/kernels-2core.json). So the engine runs full batches, one shape per model,
    on oneDNN (``ServedModel.onednn_from``) and every other size on the native kernels.
    """
    torch.backends.mkldnn.enabled = not native  # type: ignore[assignment]  # a ContextProp in torch's stubs, a bool here


def check_preprocessing(name: str, metadata: dict[str, Any]) -> bool:
    """Whether ``name``'s is_digit threshold was fitted with the preprocessing this server runs;
    a warning when not: its answers stay well-formed, but their ``is_digit`` rates are unmeasured."""
    fitted = (metadata.get("is_digit") or {}).get("preprocessing_version")
    if fitted == PREPROCESSING_VERSION:
        return True
    log.warning(
        "%s: its is_digit threshold was fitted with preprocessing version %s, but this server preprocesses with version %s; "
        "refit it (python -m models.train --arch NAME --fit-is-digit) before trusting is_digit",
        name,
        fitted,
        PREPROCESSING_VERSION,
    )
    return False
