"""OpenTelemetry traces, configured by the standard ``OTEL_*`` variables, off unless they ask for them.

Tracing is on when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``, or an OTLP endpoint is
set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and neither
``OTEL_TRACES_EXPORTER=none`` nor ``OTEL_SDK_DISABLED=true`` says otherwise. The exporter reads
the rest of the standard variables itself (protocol, headers, timeouts, batching).

A request's trace: the server span (``POST /predict``, FastAPI's own, joined to the caller's
trace when it sends ``traceparent``), and beneath it ``read``, ``decode``, ``infer`` and ``encode``; under
``infer``, the inference side's ``queue`` (waiting for the model) and ``forward`` (the pass,
with its batch size). With several workers the context crosses to the inference process
in each request frame, so one trace holds spans of both processes.

Off, nothing of the SDK is imported, FastAPI finds no tracer provider and skips its span, and
``span`` returns one shared ``nullcontext``: the request path pays a global lookup and a call
per stage.
"""

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "attached",
    "configure",
    "context_from",
    "current_context",
    "enabled",
    "record_pass",
    "shutdown",
    "span",
    "traceparent",
    "wanted",
]

_NOTHING = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer once configured


def wanted(environment: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces."""
    exporter = environment.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if environment.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or exporter == "none":
        return False
    endpoint = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environment.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return exporter in ("otlp", "console") or bool(endpoint)


def enabled() -> bool:
    return _tracer is not None


def configure(role: str) -> bool:
    """Set up this process's tracer provider when the environment asks for traces; whether it did.

    ``role`` (``server``, ``http-worker``, ``inference``) is recorded on every span of the process.
    """
    global _tracer
    if not wanted(os.environ) or _tracer is not None:
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "digits"), "process.pid": os.getpid(), "digits.role": role}
    )
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")) == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise SystemExit("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc installed") from None
        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("digits")
    return True


def shutdown() -> None:
    """Export what is buffered (at the end of the process)."""
    if _tracer is not None:
        from opentelemetry import trace

        trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one; nothing when tracing is off or the trace is not sampled
    (``OTEL_TRACES_SAMPLER``), whose spans would be dropped anyway."""
    if _tracer is None or not _recording(None):
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def _recording(parent: Any) -> bool:
    """Whether the trace of ``parent`` (None: the current context) is sampled; a parent from
    another process is never "recording" here, so its sampled flag is what counts."""
    from opentelemetry import trace

    return bool(trace.get_current_span(parent).get_span_context().trace_flags.sampled)


def current_context() -> Any:
    """The active context to hand to work that runs elsewhere (a batch); None when off or not sampled."""
    if _tracer is None or not _recording(None):
        return None
    from opentelemetry import context

    return context.get_current()


def traceparent() -> str:
    """The active context as a W3C ``traceparent`` value ("" when off, outside a span or not sampled)."""
    if _tracer is None or not _recording(None):
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def attached(parent: Any) -> Iterator[None]:
    """``parent`` (from ``context_from``) as the current context inside the block; nothing when None."""
    if parent is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)


def context_from(traceparent_value: str) -> Any:
    """The context a ``traceparent`` names (None when off or empty)."""
    if _tracer is None or not traceparent_value:
        return None
    from opentelemetry import propagate

    return propagate.extract({"traceparent": traceparent_value})


def record_pass(parents: list[Any], enqueued_s: list[float], started_s: float, finished_s: float, batch_size: int) -> None:
    """For each request in a batch, its ``queue`` and ``forward`` spans, timed by the batcher's clock.

    Times are ``time.perf_counter()`` seconds; they are placed on the wall clock by the offset
    between the two clocks now (the spans are recorded just after the pass).
    """
    if _tracer is None:
        return
    import time

    offset_ns = time.time_ns() - time.perf_counter_ns()

    def ns(seconds: float) -> int:
        return offset_ns + int(seconds * 1e9)

    for parent, enqueued in zip(parents, enqueued_s, strict=True):
        if parent is None or not _recording(parent):
            continue
        queue = _tracer.start_span("queue", context=parent, start_time=ns(enqueued))
        queue.end(end_time=ns(started_s))
        forward = _tracer.start_span("forward", context=parent, start_time=ns(started_s), attributes={"digits.batch_size": batch_size})
        forward.end(end_time=ns(finished_s))
