"""``bench.tail`` reads the server's own latency histograms: quantiles inside buckets, from real exposition text."""

import socket
import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.tail import (
    TCP_COUNTERS,
    AcceptQueueSampler,
    _counter_window,
    _histograms,
    _window,
    accept_queue,
    histogram_quantile,
    tcp_counters,
)


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


def test_the_kernel_counts_a_connection_the_server_never_accepted() -> None:
    """A listening socket whose accept queue (backlog 1) is full: the next handshakes are dropped, and counted."""
    before = tcp_counters()
    assert all(name in before for name in TCP_COUNTERS), sorted(set(TCP_COUNTERS) - set(before))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # never accepted: the queue holds one connection
        clients = [socket.socket() for _ in range(4)]
        try:
            for client in clients:
                client.setblocking(False)
                client.connect_ex(server.getsockname())
            time.sleep(1.5)  # the dropped handshakes are retried after 1 s
        finally:
            for client in clients:
                client.close()
    window = _counter_window(before, tcp_counters())
    assert window["TcpExt.ListenOverflows"] > 0
    assert window["TcpExt.TCPSynRetrans"] > 0


def test_the_accept_queue_holds_the_connections_no_one_has_accepted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        assert accept_queue(port) == 0
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            assert accept_queue(port) == 3
            server.accept()[0].close()
            assert accept_queue(port) == 2
            sampler = AcceptQueueSampler(port, interval_s=0.01).start()
            time.sleep(0.05)
            assert (sampler.stop() or {})["max"] == 2
        finally:
            for client in clients:
                client.close()
    assert accept_queue(port) is None  # nothing listens there any more
