"""W3C trace context across HTTP, the outbox, Kafka headers and the warehouse call.

The OpenTelemetry SDK makes the ids; nothing is exported unless an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, read by the
exporter itself, over HTTP/protobuf). Each request runs inside `continue_trace`, which
also puts the trace id on every log line.

The relay, the consumer and the re-drive work in batches, so their spans are recorded
after the fact with `record_span`: one per event, a child of the traceparent the event
carries, with the batch's measured start and end. When nothing is exported they are not
made at all (`exporting()`), so tracing costs the hot path nothing by default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.logs import trace_context

_propagator = TraceContextTextMapPropagator()
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_exporting = False

# FastAPI's own telemetry (through the global provider set here) makes the HTTP server
# span of each request, which `continue_trace` then hangs its span under. Its per-phase
# spans (dependencies, endpoint, serialization) and its OTel metrics and logs would cost
# every request for nothing we read: Prometheus and our JSON logs cover those.
FASTAPI_TELEMETRY: TelemetryConfig = {"operation_spans": False, "metrics": False, "logs": False}

AttributeValue = str | bool | int | float


def setup_tracing(service_name: str) -> None:
    """The process's tracer provider; spans leave over OTLP when an endpoint is set.

    The provider flushes what is still queued when the process exits (the SDK's own
    atexit hook), so a SIGTERM'd process sends its last spans too.
    """
    global _exporting
    _exporting = any(os.environ.get(name) for name in _ENDPOINT_VARS)
    # Unexported, spans are still made for their ids (log lines, the outbox header) but
    # are not recorded: a non-recording span costs next to nothing.
    sampler: Sampler = ParentBased(ALWAYS_ON) if _exporting else ALWAYS_OFF
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    if _exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def exporting() -> bool:
    """Whether spans go anywhere: batch stages record theirs only then."""
    return _exporting


def record_span(
    name: str,
    *,
    parent: str | None,
    start: float,
    end: float,
    kind: trace.SpanKind,
    attributes: Mapping[str, AttributeValue] | None = None,
    error: str | None = None,
) -> None:
    """A finished span, a child of the W3C `parent` (a root when it is missing or invalid),
    from `start` to `end` (epoch seconds). `error` marks it failed, with the reason."""
    context = _propagator.extract({"traceparent": parent}) if parent else None
    span = _tracer().start_span(
        name, context=context, kind=kind, attributes=attributes, start_time=int(start * 1e9)
    )
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end(end_time=int(end * 1e9))


def _tracer() -> trace.Tracer:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Tests and tools that skip setup still get real ids rather than the no-op zeros.
        setup_tracing("steadfast")
    return trace.get_tracer("steadfast")


@contextmanager
def continue_trace(traceparent: str | None, span_name: str) -> Iterator[str]:
    """Start a span and yield its traceparent. Its parent is the active span (FastAPI's
    server span, which read the request's header), or else `traceparent` when valid."""
    parent = None
    if not trace.get_current_span().get_span_context().is_valid and traceparent:
        parent = _propagator.extract({"traceparent": traceparent})
    with _tracer().start_as_current_span(span_name, context=parent) as span:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        trace_id = format(span.get_span_context().trace_id, "032x")
        with trace_context(trace_id):
            yield carrier["traceparent"]


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`), if valid."""
    parts = traceparent.split("-") if traceparent else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def current_traceparent() -> str | None:
    """The traceparent of the active span, to send on an outgoing call."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
