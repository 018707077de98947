"""Prometheus metrics, one registry per app so that several apps can live in one process.

With several worker processes, prometheus-client's multiprocess mode is on (the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before any child starts): every process
writes its samples to files there and a scrape of any worker sums them, so each request
is counted once whichever worker served it, and the batching metrics of the inference
process appear in every worker's scrape. The supervisor writes there too: its restarts of
children are its own counter, and a dead child's live gauges (queue depth, served models) are
dropped when it is reaped, while its counters keep counting what it served.
"""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["CHILD_KINDS", "CONTENT_TYPE_LATEST", "RESTART_REASONS", "Metrics", "SupervisorMetrics"]

disable_created_metrics()  # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "digits_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "digits_http_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.images = Counter("digits_images_predicted_total", "Images predicted", ["model"], registry=registry)
        self.batch_size = Histogram(
            "digits_batch_size_images", "Images per forward pass (dynamic batching)", ["model"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_wait = Histogram(
            "digits_queue_wait_seconds",
            "Time a request chunk waited for its forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "digits_inference_seconds", "Duration of one forward pass", ["model"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge(
            "digits_queue_depth_images", "Images waiting for a forward pass", ["model"], registry=registry, multiprocess_mode="livesum"
        )
        self.model_info = Gauge(
            "digits_model_info",
            "Served models: 1 for the weights serving now, 0 for weights a load replaced",
            ["model", "sha256", "device"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self._served: dict[str, tuple[str, str]] = {}  # model -> the labels of the weights serving now

    def observe_batch(self, model: str, size: int, queue_waits_s: list[float], inference_s: float) -> None:
        self.images.labels(model).inc(size)
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(inference_s)
        for wait in queue_waits_s:
            self.queue_wait.labels(model).observe(wait)

    def observe_queue(self, model: str, images: int) -> None:
        self.queue_depth.labels(model).set(images)

    def observe_model(self, model: str, sha256: str | None, device: str) -> None:
        if (previous := self._served.get(model)) is not None:
            self.model_info.labels(model, *previous).set(0)
        self._served[model] = (sha256 or "", device)
        self.model_info.labels(model, sha256 or "", device).set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


CHILD_KINDS = ("http_worker", "inference")
RESTART_REASONS = ("exited", "hung")


class SupervisorMetrics:
    """The supervisor's series, in the multiprocess directory that every worker's scrape sums.

    Only in multiprocess mode: prometheus-client picks it when first imported, so the
    supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before it imports this module.
    """

    def __init__(self) -> None:
        if values.ValueClass is values.MutexValue:
            raise RuntimeError("prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was set")
        self.restarts = Counter(
            "digits_child_restarts_total",
            "Child processes the supervisor replaced, by kind and why the old one ended",
            ["kind", "reason"],
            registry=CollectorRegistry(),
        )
        for kind in CHILD_KINDS:  # every series from the start, at 0, so that a rate() has a baseline
            for reason in RESTART_REASONS:
                self.restarts.labels(kind, reason)

    def observe_restart(self, kind: str, reason: str) -> None:
        self.restarts.labels(kind, reason).inc()

    def forget_process(self, pid: int) -> None:
        """A reaped child: its live gauges go, its counters stay in the sums."""
        mark_process_dead(pid)
