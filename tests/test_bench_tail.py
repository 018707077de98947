"""``bench.tail`` reads the server's own latency histograms: quantiles inside buckets, from real exposition text."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.tail import _histograms, _window, histogram_quantile


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == 0.1
    assert histogram_quantile(0.7, buckets) == 0.1 + 0.1 * (70 - 50) / 40
    assert histogram_quantile(0.99, buckets) == 0.2 + 0.2 * (99 - 90) / 10
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None


def test_the_window_is_the_difference_of_two_scrapes_of_the_predict_route() -> None:
    registry = CollectorRegistry()
    latency = Histogram("digits_http_request_duration_seconds", "", ["route", "method"], buckets=(0.01, 0.1, 1.0), registry=registry)
    for _ in range(10):
        latency.labels("/predict", "POST").observe(0.5)  # before the window
        latency.labels("/healthz", "GET").observe(0.001)  # another route: not counted
    before = _histograms(generate_latest(registry).decode())
    for _ in range(100):
        latency.labels("/predict", "POST").observe(0.05)
    window = _window(before, _histograms(generate_latest(registry).decode()))
    assert window["server"]["count"] == 100
    assert 10 < window["server"]["p50"] < 100 and window["server"]["p99"] < 100  # ms, all in the (0.01, 0.1] bucket
    assert window["queue_wait"] == {"p50": None, "p99": None, "count": 0}
