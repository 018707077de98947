"""``python -m bench.gil``: a CPU forward pass beside a busy Python thread, eager against traced.

    python -m bench.gil                                    # ~1 minute
    python -m bench.gil --output bench/results/gil-2core.json

The server's pass runs in an inference thread of the process whose event loop parses HTTP,
so it shares the GIL with Python that never waits. Each model's pass of ``--batch`` MNIST
test images, on the server's torch threads, is timed (best of ``--repeats``) in four ways:
eager and traced (``service.inference.loader.trace_cpu_pass``), each alone and beside a
thread that runs a pure-Python loop. The slowdown beside the loop is what the GIL costs
the pass; on a machine with a free core for that loop, it is nearly all of it.
"""

import argparse
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.server import ROOT, describe_machine
from evaluation import mnist
from service.config import Settings
from service.inference.loader import ServedModel, load_models

__all__ = ["main", "measure"]


@contextmanager
def busy_python() -> Iterator[None]:
    """A thread running a pure-Python loop (as an event loop busy with HTTP does) for the duration."""
    stop = threading.Event()

    def spin() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _best_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 2)


def measure(served: ServedModel, images: np.ndarray, repeats: int) -> dict[str, float]:
    """Milliseconds per pass: eager and traced, alone and beside a busy Python thread."""
    eager, traced = dataclasses.replace(served, traced=None), dataclasses.replace(served)
    traced.trace()
    assert traced.traced is not None, f"{served.name} could not be traced"
    passes = {"eager": eager, "traced": traced}
    result = {f"{name}_alone_ms": _best_ms(partial(model.forward, images), repeats) for name, model in passes.items()}
    with busy_python():
        for name, model in passes.items():
            result[f"{name}_beside_busy_ms"] = _best_ms(partial(model.forward, images), repeats)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--batch", type=int, default=128, help="images per pass [default: 128, the CPU batch limit]")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)

    threads = Settings(workers=1).inference_threads()
    images = (mnist.load(args.data_dir, train=False).images[: args.batch, None] / 255).astype(np.float32)
    served = load_models(args.weights_dir, torch.device("cpu"), threads)
    results: dict[str, Any] = {"batch": args.batch, "torch_threads": threads, "repeats": args.repeats, "models": {}}
    for name, model in served.items():
        results["models"][name] = row = measure(model, images, args.repeats)
        print(f"{name:10s} " + "  ".join(f"{key} {value:8.2f}" for key, value in row.items()), flush=True)
    if args.output:
        command = "python -m bench.gil " + " ".join(sys.argv[1:] if argv is None else argv)
        payload = {"command": command, "machine": describe_machine(), **results}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
