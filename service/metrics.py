"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

disable_created_metrics()  # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "digits_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "digits_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("digits_images_predicted_total", "Images predicted", ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "digits_batch_size_images",
            "Images per forward pass (dynamic batching)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "digits_queue_wait_seconds",
            "Time a request chunk waited for its forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "digits_inference_seconds", "Duration of one forward pass", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("digits_queue_depth_images", "Images waiting for a forward pass", ["model"], registry=self.registry)
        self.model_info = Info("digits_model", "Served models", ["model"], registry=self.registry)

    def observe_batch(self, model: str, size: int, queue_waits_s: list[float], inference_s: float) -> None:
        self.images.labels(model).inc(size)
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(inference_s)
        for wait in queue_waits_s:
            self.queue_wait.labels(model).observe(wait)

    def track_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
