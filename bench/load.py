"""The load generator: wrk, a well-known HTTP load tool written in C, run with ``bench/wrk.lua``.

Why not a Python client: an async httpx client costs ~0.5 ms of CPU per request in its own
process, which adds to every concurrency-1 latency and takes half a core of the 2 the server
needs at concurrency 32. wrk used 0.00-0.12 of a core during every /predict run
(``loadgen_cpu_fraction`` in ``bench/results/cpu-2core-run*.json``), so the numbers describe
the server.

Each run is closed-loop: ``concurrency`` keep-alive connections, each sending its next
request as soon as the last one is answered, on one wrk thread. Request bodies are built
once, before any timing, from the PNGs pre-encoded in the payloads file, and written to a
file that the script reads at start. A run lasts ``duration_s`` (this process sends wrk the
SIGINT that Ctrl-C would, so fractions of a second work) or ``requests`` answers (the script
stops wrk itself). The warm-up is a run of its own whose numbers are dropped.

The load generator's CPU use over the measured window is wrk's user + system seconds
(``getrusage`` of reaped children) divided by wall seconds: near 1.0, the client would be
what limits the run.

By hand, against a server you started yourself::

    python -m bench.load --payloads FILE --url http://127.0.0.1:8000 --path '/predict?model=resnet' --concurrency 8
"""

import argparse
import base64
import io
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = ["BodyKind", "Job", "LoadGenerator", "build_bodies", "read_payloads", "v2_infer_body", "write_payloads"]

BodyKind = Literal["multipart", "json", "v2", "none"]
Body = tuple[bytes, str]  # content, content type ("" without a body)

WRK_SCRIPT = Path(__file__).resolve().with_name("wrk.lua")
INSTALL_HINT = "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), `brew install wrk` (macOS), or pass its path"


@dataclass(frozen=True)
class Job:
    """One load run: ``concurrency`` connections, each sending a request as soon as its last one is answered."""

    url: str
    path: str
    method: Literal["GET", "POST"] = "POST"
    body: BodyKind = "multipart"
    images_per_request: int = 1
    concurrency: int = 1
    duration_s: float = 1.0  # measured window, unless ``requests`` is given
    warmup_s: float = 0.2  # untimed load before the measured window
    requests: int | None = None  # stop after this many answers instead of a duration (in-flight ones may add a few)
    timeout_s: float = 120.0


def write_payloads(path: Path, pngs: Sequence[bytes]) -> None:
    path.write_text(json.dumps({"pngs": [base64.b64encode(png).decode("ascii") for png in pngs]}))


def read_payloads(path: Path) -> list[bytes]:
    return [base64.b64decode(text) for text in json.loads(path.read_text())["pngs"]]


def _multipart(pngs: Sequence[bytes], first: int) -> Body:
    boundary = "bench-" + uuid.uuid4().hex
    parts: list[bytes] = []
    for index, png in enumerate(pngs, start=first):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="digit-{index}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts += [head.encode(), png, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _json(pngs: Sequence[bytes]) -> Body:
    payload = {"images": [base64.b64encode(png).decode("ascii") for png in pngs]}
    return json.dumps(payload).encode(), "application/json"


def v2_infer_body(pngs: Sequence[bytes]) -> Body:
    """The Open Inference Protocol's JSON request: the images as one FP32 [N, 1, 28, 28] tensor ``input`` of
    intensities in [0, 1], and only ``probabilities`` asked for (the output every V2 peer has)."""
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32) / 255.0 for png in pngs])
    tensor = {"name": "input", "shape": [len(pngs), 1, 28, 28], "datatype": "FP32", "data": pixels.reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode(), "application/json"


def build_bodies(pngs: Sequence[bytes], kind: BodyKind, per_request: int) -> list[Body]:
    """Distinct request bodies of ``per_request`` images each, cycling through ``pngs``."""
    if kind == "none":
        return [(b"", "")]
    if not pngs:
        raise ValueError("no images to send")
    bodies = []
    for k in range(max(1, len(pngs) // per_request)):
        first = k * per_request
        chunk = [pngs[(first + j) % len(pngs)] for j in range(per_request)]
        bodies.append(_multipart(chunk, first) if kind == "multipart" else v2_infer_body(chunk) if kind == "v2" else _json(chunk))
    return bodies


def _write_bodies(path: Path, bodies: Sequence[Body]) -> None:
    """The file ``bench/wrk.lua`` reads: a "content-type<TAB>length" line, then the bytes, per body."""
    with path.open("wb") as file:
        for content, content_type in bodies:
            file.write(f"{content_type}\t{len(content)}\n".encode() + content)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parse(report: str) -> dict[str, Any]:
    """wrk.lua's "key value" lines: counts, error kinds, an error sample, latencies in us."""
    stats: dict[str, Any] = {"errors": {}, "sample": None}
    for line in report.splitlines():
        key, _, value = line.partition(" ")
        if key == "error":
            kind, _, count = value.rpartition("\t")
            stats["errors"][kind] = int(count)
        elif key == "sample":
            stats["sample"] = value
        else:
            stats[key] = float(value)
    return stats


class LoadGenerator:
    """Runs each :class:`Job` through wrk; one at a time."""

    def __init__(self, payloads: Path, work_dir: Path, wrk: str | None = None) -> None:
        found = wrk or shutil.which("wrk")
        if found is None:
            raise RuntimeError(INSTALL_HINT)
        self.wrk = found
        self.pngs = read_payloads(payloads)
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._bodies: dict[tuple[BodyKind, int], Path] = {}
        banner = subprocess.run([self.wrk, "--version"], capture_output=True, text=True, check=False).stdout
        self.version = " ".join(banner.split()[:2]) or "wrk"

    def run(self, job: Job) -> dict[str, Any]:
        """Warm up for ``job.warmup_s``, then measure; latencies are wrk's, of every answered request."""
        bodies = self._bodies_file(job.body, job.images_per_request)
        if job.warmup_s > 0:
            self._wrk(job, bodies, seconds=job.warmup_s, stop_after=0)
        cpu_before = _children_cpu_seconds()
        stats = self._wrk(job, bodies, seconds=None if job.requests else job.duration_s, stop_after=job.requests or 0)
        cpu = _children_cpu_seconds() - cpu_before
        wall = stats["duration_us"] / 1e6
        answered = int(stats["answered"])
        if job.requests and answered < job.requests:
            raise RuntimeError(f"wrk gave up after {answered} of {job.requests} answers in {wall:.0f} s")
        socket_errors = sum(n for kind, n in stats["errors"].items() if kind.startswith("socket"))
        ok = answered - sum(n for kind, n in stats["errors"].items() if kind.startswith("HTTP"))
        latency_ms = {key: stats[key] / 1000 for key in ("p50", "p95", "p99", "mean", "min", "max")} if answered else None
        return {
            "job": asdict(job),
            "requests": answered + socket_errors,
            "ok": ok,
            "errors": answered + socket_errors - ok,
            "error_kinds": stats["errors"],
            "error_sample": stats["sample"],
            "wall_s": wall,
            "requests_per_s": ok / wall if wall > 0 else 0.0,
            "images_per_s": ok * job.images_per_request / wall if wall > 0 else 0.0,
            "latency_ms": latency_ms,
            "loadgen_cpu_s": cpu,
            "loadgen_cpu_fraction": cpu / wall if wall > 0 else 0.0,
            "client": self.version,
        }

    def _bodies_file(self, kind: BodyKind, per_request: int) -> Path:
        if (kind, per_request) not in self._bodies:
            path = self.work_dir / f"bodies-{kind}-{per_request}.bin"
            _write_bodies(path, build_bodies(self.pngs, kind, per_request))
            self._bodies[kind, per_request] = path
        return self._bodies[kind, per_request]

    def _wrk(self, job: Job, bodies: Path, *, seconds: float | None, stop_after: int) -> dict[str, Any]:
        """One wrk process: ``seconds`` long (ended by SIGINT), or until ``stop_after`` answers."""
        report = self.work_dir / "wrk-report.txt"
        report.unlink(missing_ok=True)
        # wrk's own limit, in whole seconds: a timed run ends by SIGINT long before it, and a
        # counted run (the soak) that has not finished in 10 minutes is a failure.
        backstop_s = int(seconds) + 60 if seconds is not None else 600
        command = [
            self.wrk,
            *("--threads", "1", "--connections", str(job.concurrency), "--duration", f"{backstop_s}s"),
            *("--timeout", f"{max(1, round(job.timeout_s))}s", "--script", str(WRK_SCRIPT), job.url),
            *("--", str(bodies), job.method, job.path, str(stop_after), str(report)),
        ]
        log_path = self.work_dir / "wrk.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # as Ctrl-C: wrk stops and reports what it measured
            process.wait(timeout=job.timeout_s + 30)
        if process.returncode != 0 or not report.exists():
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"wrk failed (exit {process.returncode}): {' '.join(command)}\n{tail}")
        return _parse(report.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=Path, required=True, help="JSON file {'pngs': [base64, ...]} written by bench.run")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/predict?model=ensemble")
    parser.add_argument("--method", choices=["GET", "POST"], default="POST")
    parser.add_argument("--body", choices=["multipart", "json", "none"], default="multipart")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--requests", type=int, default=None, help="a fixed number of measured requests instead of --duration")
    parser.add_argument("--wrk", default=None, help="path of the wrk binary (default: found on PATH)")
    args = parser.parse_args(argv)
    job = Job(
        url=args.url,
        path=args.path,
        method=args.method,
        body=args.body,
        images_per_request=args.images_per_request,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        requests=args.requests,
    )
    with tempfile.TemporaryDirectory(prefix="bench-load-") as work_dir:
        print(json.dumps(LoadGenerator(args.payloads, Path(work_dir), args.wrk).run(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
