"""The load generator: a closed-loop async httpx client in a process of its own.

``bench.run`` starts it as ``python -m bench.load --serve --payloads FILE`` and sends it one
job (a JSON object) per line on stdin; it answers each with one JSON line on stdout. Every
request body is built once, before any timing, from the PNGs pre-encoded in FILE, so the
timed loop only sends bytes and reads the answer.

It reports its own CPU use over the measured window (``getrusage`` of this process, user +
system seconds, divided by wall seconds). A value near 1.0 means the client saturated a core
and may itself be what limits the numbers, not the server.

By hand, against a server you started yourself::

    python -m bench.load --payloads FILE --url http://127.0.0.1:8000 --path '/predict?model=resnet' --concurrency 8

This module imports only the standard library and httpx (and uvloop when installed), so the
client process stays small and starts fast.
"""

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = ["BodyKind", "Job", "LoadGenerator", "build_bodies", "percentile", "read_payloads", "write_payloads"]

BodyKind = Literal["multipart", "json", "none"]
Body = tuple[bytes, dict[str, str]]


@dataclass(frozen=True)
class Job:
    """One load run: ``concurrency`` workers each send a request as soon as their last one is answered."""

    url: str
    path: str
    method: Literal["GET", "POST"] = "POST"
    body: BodyKind = "multipart"
    images_per_request: int = 1
    concurrency: int = 1
    duration_s: float = 1.0  # measured window, unless ``requests`` is given
    warmup_s: float = 0.2  # untimed load before the measured window
    requests: int | None = None  # a fixed number of measured requests instead of a duration
    timeout_s: float = 120.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        return cls(**data)


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_sample: str | None = None
    requests: int = 0


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
    return b"".join(parts), {"content-type": f"multipart/form-data; boundary={boundary}"}


def _json(pngs: Sequence[bytes]) -> Body:
    payload = {"images": [base64.b64encode(png).decode("ascii") for png in pngs]}
    return json.dumps(payload).encode(), {"content-type": "application/json"}


def build_bodies(pngs: Sequence[bytes], kind: BodyKind, per_request: int) -> list[Body]:
    """Distinct request bodies of ``per_request`` images each, cycling through ``pngs``."""
    if kind == "none":
        return [(b"", {})]
    if not pngs:
        raise ValueError("no images to send")
    bodies = []
    for k in range(max(1, len(pngs) // per_request)):
        first = k * per_request
        chunk = [pngs[(first + j) % len(pngs)] for j in range(per_request)]
        bodies.append(_multipart(chunk, first) if kind == "multipart" else _json(chunk))
    return bodies


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(
    clients: list[httpx.AsyncClient], requests: list[httpx.Request], until: float, count: int | None, tally: _Tally | None
) -> None:
    """Closed loop: every worker sends its next request when its last one is answered."""
    next_request = itertools.count()
    started = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started
        while (started < count) if count is not None else (time.perf_counter() < until):
            started += 1
            request = requests[next(next_request) % len(requests)]
            error: str | None = None
            sample: str | None = None
            begun = time.perf_counter()
            try:
                response = await client.send(request)
                if response.status_code != 200:
                    error, sample = f"HTTP {response.status_code}", response.text[:300]
            except httpx.HTTPError as exc:
                error, sample = type(exc).__name__, str(exc)[:300]
            latency = time.perf_counter() - begun
            if tally is not None:
                tally.requests += 1
                if error is None:
                    tally.latencies.append(latency)
                else:
                    tally.errors[error] = tally.errors.get(error, 0) + 1
                    tally.error_sample = tally.error_sample or sample
            if error is not None and not error.startswith("HTTP"):
                await asyncio.sleep(0.01)  # a refused connection fails at once: do not spin

    await asyncio.gather(*(worker(client) for client in clients))


async def run_job(job: Job, bodies: list[Body]) -> dict[str, Any]:
    """Warm up for ``job.warmup_s``, then measure; latencies are of successful requests.

    Each worker has a client of its own with one keep-alive connection: httpx's shared
    connection pool costs CPU that grows with the number of connections, which would make
    the client, not the server, the bottleneck at high concurrency. Requests are built once
    and re-sent as they are.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=job.url, limits=limits, timeout=job.timeout_s, trust_env=False))
            for _ in range(job.concurrency)
        ]
        requests = [clients[0].build_request(job.method, job.path, content=content or None, headers=headers) for content, headers in bodies]
        if job.warmup_s > 0:
            await _drive(clients, requests, time.perf_counter() + job.warmup_s, None, None)
        tally = _Tally()
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        await _drive(clients, requests, start + job.duration_s, job.requests, tally)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    ok = len(tally.latencies)
    latencies = sorted(tally.latencies)
    latency_ms = (
        {
            "p50": 1000 * percentile(latencies, 50),
            "p95": 1000 * percentile(latencies, 95),
            "p99": 1000 * percentile(latencies, 99),
            "mean": 1000 * sum(latencies) / ok,
            "min": 1000 * latencies[0],
            "max": 1000 * latencies[-1],
        }
        if latencies
        else None
    )
    return {
        "job": asdict(job),
        "requests": tally.requests,
        "ok": ok,
        "errors": tally.requests - ok,
        "error_kinds": tally.errors,
        "error_sample": tally.error_sample,
        "wall_s": wall,
        "requests_per_s": ok / wall if wall > 0 else 0.0,
        "images_per_s": ok * job.images_per_request / wall if wall > 0 else 0.0,
        "latency_ms": latency_ms,
        "loadgen_cpu_s": cpu,
        "loadgen_cpu_fraction": cpu / wall if wall > 0 else 0.0,
    }


def _loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    with contextlib.suppress(ImportError):
        import uvloop

        return "uvloop", uvloop.new_event_loop
    return "asyncio", None


def _run_all(jobs: Sequence[Job] | None, pngs: list[bytes]) -> int:
    """Each job from ``jobs``, or else one per stdin line; one JSON result line per job."""
    loop_name, factory = _loop_factory()
    cache: dict[tuple[str, int], list[Body]] = {}
    lines = (json.dumps(asdict(job)) for job in jobs) if jobs is not None else sys.stdin
    with asyncio.Runner(loop_factory=factory) as runner:
        for line in lines:
            if not line.strip():
                continue
            job = Job.from_dict(json.loads(line))
            key = (job.body, job.images_per_request)
            if key not in cache:
                cache[key] = build_bodies(pngs, job.body, job.images_per_request)
            coroutine: Coroutine[Any, Any, dict[str, Any]] = run_job(job, cache[key])
            result = runner.run(coroutine)
            result["event_loop"] = loop_name
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    return 0


class LoadGenerator:
    """Parent side: the ``--serve`` child process, one job at a time."""

    def __init__(self, payloads: Path, stderr_path: Path) -> None:
        self._stderr = stderr_path.open("wb")
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.load", "--serve", "--payloads", str(payloads)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.stderr_path = stderr_path

    def run(self, job: Job) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(asdict(job)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            tail = self.stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the load generator exited with {self.process.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=Path, required=True, help="JSON file {'pngs': [base64, ...]} written by bench.run")
    parser.add_argument("--serve", action="store_true", help="read jobs (JSON lines) from stdin; used by bench.run")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/predict?model=ensemble")
    parser.add_argument("--method", choices=["GET", "POST"], default="POST")
    parser.add_argument("--body", choices=["multipart", "json", "none"], default="multipart")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--requests", type=int, default=None, help="a fixed number of measured requests instead of --duration")
    args = parser.parse_args(argv)
    pngs = read_payloads(args.payloads)
    if args.serve:
        return _run_all(None, pngs)
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
    return _run_all([job], pngs)


if __name__ == "__main__":
    sys.exit(main())
