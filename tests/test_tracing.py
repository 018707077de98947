"""OpenTelemetry traces reach a real OTLP/HTTP receiver, one trace per request, both processes in it."""

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service import tracing
from tests.conftest import LiveServer, free_port, png_bytes, start_server, stop_server, stroke_digit_one

pytestmark = pytest.mark.slow

ONE = png_bytes(stroke_digit_one())
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    resource: dict[str, object]


def _values(attributes: object) -> dict[str, object]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in attributes}  # type: ignore[attr-defined]


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver (protobuf), keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), ReceiverHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest.FromString(body)
        spans = [
            Span(
                span.name,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                _values(span.attributes),
                _values(rs.resource.attributes),
            )
            for rs in export.resource_spans
            for scope in rs.scope_spans
            for span in scope.spans
        ]
        with self.server.lock:
            self.server.spans.extend(spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def traced_server(tmp_path: Path, receiver: Receiver, workers: int = 1) -> LiveServer:
    return start_server(
        tmp_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_SERVICE_NAME="digits-under-test",
        DIGITS_WORKERS=str(workers),
    )


def one_traced_request(server: LiveServer, receiver: Receiver) -> list[Span]:
    headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    response = httpx.post(server.url + "/predict", files=[("files", ("one.png", ONE, "image/png"))], headers=headers, timeout=30)
    assert response.status_code == 200
    stop_server(server)  # the processes export what is still buffered as they end
    with receiver.lock:
        return [span for span in receiver.spans if span.trace_id == TRACE_ID]


def assert_one_request_trace(spans: list[Span]) -> dict[str, Span]:
    by_name = {span.name: span for span in spans}
    assert {"POST /predict", "read", "decode", "infer", "encode", "queue", "forward"} <= set(by_name), sorted(by_name)
    root = by_name["POST /predict"]
    assert root.parent_id == CALLER_SPAN, "the caller's traceparent was not honoured"
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["http.route"] == "/predict"
    for name in ("read", "decode", "infer", "encode"):
        assert by_name[name].parent_id == root.span_id, name
    for name in ("queue", "forward"):
        assert by_name[name].parent_id == by_name["infer"].span_id, name
    assert by_name["forward"].attributes["digits.batch_size"] == 1
    assert {span.resource["service.name"] for span in spans} == {"digits-under-test"}
    return by_name


def test_one_process_traces_a_request_from_its_server_span_to_the_forward_pass(tmp_path: Path, receiver: Receiver) -> None:
    spans = one_traced_request(traced_server(tmp_path, receiver), receiver)
    by_name = assert_one_request_trace(spans)
    assert by_name["forward"].resource["digits.role"] == "server"


def test_with_workers_the_trace_holds_spans_of_the_worker_and_the_inference_process(tmp_path: Path, receiver: Receiver) -> None:
    spans = one_traced_request(traced_server(tmp_path, receiver, workers=2), receiver)
    by_name = assert_one_request_trace(spans)
    worker, inference = by_name["infer"].resource, by_name["forward"].resource
    assert worker["digits.role"] == "http-worker" and inference["digits.role"] == "inference"
    assert worker["process.pid"] != inference["process.pid"]


@pytest.mark.parametrize(
    ("environment", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_the_standard_variables_ask_for_it(environment: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(environment) is wanted


def test_off_a_span_is_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_tracer", None)
    assert tracing.span("decode") is tracing.span("infer")  # one shared no-op context
    assert tracing.current_context() is None and tracing.traceparent() == ""
