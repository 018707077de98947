"""``python -m bench.kernels``: the CPU pass with PyTorch's own convolution kernels against oneDNN's.

    python -m bench.kernels                                  # ~1 minute
    python -m bench.kernels --output bench/results/kernels-2core.json

The server runs its CPU passes with oneDNN off (``service.inference.loader.
use_native_convolutions``). For each side, a fresh process loads and traces the served models
as the engine does, on the server's torch threads, and measures each model's images per
second at a few batch sizes on MNIST test images (median of the passes after a warm-up), then
runs one pass of every size from 1 to ``--max-batch`` through every model, as dynamic
batching does over time, and reads the process's resident memory before and after: oneDNN
compiles and caches a kernel for every input shape it meets.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bench.server import ROOT, describe_machine
from evaluation import mnist
from service.config import Settings
from service.inference.loader import load_models, use_native_convolutions

__all__ = ["main", "measure"]

SIDES = {"native": False, "onednn": True}  # side -> torch.backends.mkldnn.enabled


def _resident_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def measure(weights_dir: Path, data_dir: Path, onednn: bool, batches: list[int], max_batch: int) -> dict[str, Any]:
    """One side, in this process: images/s per model and batch size, and memory after every size."""
    threads = Settings(workers=1).inference_threads()
    torch.set_num_threads(threads)
    served = load_models(weights_dir, torch.device("cpu"), threads)
    use_native_convolutions(not onednn)  # after load_models, which turns oneDNN off on the CPU
    for model in served.values():
        model.trace()
    images = (mnist.load(data_dir, train=False).images[:max_batch, None] / 255).astype(np.float32)
    speed: dict[str, dict[int, float]] = {}
    for name, model in served.items():
        speed[name] = {}
        for batch in batches:
            for _ in range(3):
                model.forward(images[:batch])
            times = []
            for _ in range(max(10, 400 // batch)):
                started = time.perf_counter()
                model.forward(images[:batch])
                times.append(time.perf_counter() - started)
            speed[name][batch] = batch / float(np.median(times))
    before = _resident_mb()
    for batch in range(1, max_batch + 1):
        for model in served.values():
            model.forward(images[:batch])
    return {"images_per_s": speed, "rss_mb_traced": before, "rss_mb_after_every_size": _resident_mb(), "torch_threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--max-batch", type=int, default=128, help="sizes 1..N run before the memory is read [default: 128, the CPU limit]")
    parser.add_argument("--rounds", type=int, default=2, help="each side this many times, interleaved")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)  # one side, in this process
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)

    if args.side:
        print(json.dumps(measure(args.weights_dir, args.data_dir, SIDES[args.side], args.batches, args.max_batch)))
        return 0
    runs = []
    for round_ in range(1, args.rounds + 1):
        for side in SIDES:
            command = [sys.executable, "-m", "bench.kernels", "--side", side, "--weights-dir", str(args.weights_dir)]
            command += ["--data-dir", str(args.data_dir), "--max-batch", str(args.max_batch), "--batches", *map(str, args.batches)]
            result = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
            runs.append({"round": round_, "side": side, **result})
            rows = result["images_per_s"].items()
            speeds = "  ".join(f"{name} b{batch} {value:6.0f}" for name, row in rows for batch, value in row.items())
            print(
                f"round {round_} {side:7s} img/s: {speeds}  |  RSS {result['rss_mb_traced']:.0f} MB traced, "
                f"{result['rss_mb_after_every_size']:.0f} MB after sizes 1-{args.max_batch}",
                flush=True,
            )
    if args.output:
        command_line = "python -m bench.kernels " + " ".join(sys.argv[1:] if argv is None else argv)
        args.output.write_text(json.dumps({"command": command_line, "machine": describe_machine(), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
