"""W3C trace context across HTTP, the outbox, Kafka headers and the warehouse call.

The OpenTelemetry SDK makes the ids; nothing is exported unless an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, read by the exporter itself). Each unit of work runs
inside `continue_trace`, which also puts the trace id on every log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.logs import trace_context

_propagator = TraceContextTextMapPropagator()


def setup_tracing(service_name: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:  # the exporter is optional: install opentelemetry-exporter-otlp to use it
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            pass
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def _tracer() -> trace.Tracer:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Tests and tools that skip setup still get real ids rather than the no-op zeros.
        setup_tracing("steadfast")
    return trace.get_tracer("steadfast")


@contextmanager
def continue_trace(traceparent: str | None, span_name: str) -> Iterator[str]:
    """Start a span (a child of `traceparent` when it is valid); yield the new traceparent."""
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    with _tracer().start_as_current_span(span_name, context=parent) as span:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        trace_id = format(span.get_span_context().trace_id, "032x")
        with trace_context(trace_id):
            yield carrier["traceparent"]


def trace_id_of(traceparent: str) -> str:
    return traceparent.split("-")[1]


def current_traceparent() -> str | None:
    """The traceparent of the active span, to send on an outgoing call."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
