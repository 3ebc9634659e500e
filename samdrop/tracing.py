"""OpenTelemetry traces: one trace per image, from the function's event through the endpoint call
and the predictor's stages to the completion message (docs/operations.md "Operating it").

``SAMDROP_TRACES`` chooses where spans go, once per process: ``off`` (the default: the API's
no-op tracer, nothing recorded, no trace ids anywhere), ``console`` (JSON spans on stderr),
``otlp`` (OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``) or
``cloud`` (Cloud Trace, with Application Default Credentials). The function hands the trace to
the predictor in a W3C ``traceparent`` header; the trace id is written into the completion message,
``masks.json`` and every structured log line (:mod:`samdrop.logs`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context, propagate, trace

from samdrop.settings import TRACES_MODES

__all__ = ["TRACES_MODES", "configure", "current_trace_id", "incoming_context", "outgoing_headers", "tracer"]
TRACER_NAME = "samdrop"
_configured: str | None = None
_recording: Any = None  # a provider set by recording(), used instead of the global one
_lock = threading.Lock()


def configure(mode: str, service: str) -> None:
    """Install the process's tracer provider for ``mode`` (once; later calls are no-ops)."""
    global _configured
    with _lock:
        if _configured is not None or mode == "off":
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(_exporter(mode)))
        trace.set_tracer_provider(provider)
        _configured = mode


def _exporter(mode: str) -> Any:
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

    return CloudTraceSpanExporter()  # type: ignore[no-untyped-call]


def tracer() -> trace.Tracer:
    provider = _recording
    return provider.get_tracer(TRACER_NAME) if provider is not None else trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def recording(exporter: Any) -> Iterator[None]:
    """Send this process's spans to ``exporter`` while the block runs, whatever ``configure`` chose
    (the SDK lets a process set its global provider only once; tests record one block each)."""
    global _recording
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _recording = provider
    try:
        yield
    finally:
        _recording = None
        provider.shutdown()


def current_trace_id() -> str | None:
    """The 32-hex-digit id of the trace in progress, or None (traces off, or outside a span)."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def outgoing_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) for a call made inside the current span; {} when off."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def incoming_context(headers: Mapping[str, str]) -> context.Context:
    """The trace a request's ``traceparent`` header continues (an empty context without one)."""
    return propagate.extract(dict(headers))
