"""OpenTelemetry tracing of the services, set up from the standard `OTEL_*` variables; off by default.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, or `console` to read spans on stderr) or an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` (`otel_env`: the metrics' rule too). Spans are
exported over OTLP/gRPC in batches (the SDK reads `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*` and
`OTEL_RESOURCE_ATTRIBUTES`); the service name is `OTEL_SERVICE_NAME`, else `adaspec-<service>`. Off, no
provider is installed: the API's tracer hands out non-recording spans, the coordinator builds no span
attributes (`enabled()`), and the replicas' step spans (`SessionSteps`) are not made.

Trace context crosses the services inside the messages (the `traceparent` fields, W3C format), not in the
calls' metadata: one link stream carries many sessions' steps, each of which belongs to its own request's
trace. The gRPC instrumentation traces the RPCs themselves (`rpc_server_interceptor`), apart from the links
and health checks, whose calls last as long as the process and say nothing per request; the ASGI
instrumentation traces the HTTP API's requests (`instrument_http_app`), and the SDK sends the current span's
context to the coordinator.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
from collections import deque
from collections.abc import Mapping

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adaspec.service_runtime.otel_env import export_requested, service_resource
from adaspec.service_runtime.otel_env import exporters as signal_exporters

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("adaspec")  # a proxy: it records once `configure_tracing` installs a provider
_PROPAGATOR = TraceContextTextMapPropagator()
_enabled = False


def tracing_requested(env: Mapping[str, str] = os.environ) -> bool:
    return export_requested("traces", env)


def enabled() -> bool:
    """Whether this process records spans."""
    return _enabled


def configure_tracing(service: str) -> None:
    """Install the SDK's tracer provider for this process when the environment asks for tracing."""
    global _enabled
    if not tracing_requested():
        return
    from opentelemetry.sdk.resources import SERVICE_NAME
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporters = signal_exporters("traces")
    resource = service_resource(service)
    provider = TracerProvider(resource=resource)
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # the spans still batched go out before the process ends
    _enabled = True
    log.info("tracing", extra={"exporters": sorted(exporters), "service_name": resource.attributes[SERVICE_NAME]})


def traceparent(span: trace.Span) -> str:
    """`span`'s W3C traceparent ("" for an invalid span: tracing off, or no span current)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def parent_from(traceparent_value: str) -> otel_context.Context | None:
    """The context a span continues from a W3C traceparent (None for none, or for one that does not parse)."""
    if not traceparent_value:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent_value})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def within(span: trace.Span) -> otel_context.Context:
    """The context whose spans are `span`'s children."""
    return trace.set_span_in_context(span)


def trace_id(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def end_with_error(span: trace.Span, error_type: str, description: str = "") -> None:
    """Mark `span` failed (`error.type`, the semantic conventions' attribute) and end it."""
    span.set_attribute("error.type", error_type)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description[:200]))
    span.end()


def rpc_server_interceptor() -> grpc.aio.ServerInterceptor | None:
    """The OpenTelemetry gRPC instrumentation's server interceptor, for every method but the links, health and
    reflection (None while tracing is off)."""
    if not _enabled:
        return None
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    skipped = filters.any_of(filters.method_name("Link"), filters.health_check(),
                             filters.service_prefix("grpc.reflection"))
    return aio_server_interceptor(filter_=filters.negate(skipped))


def instrument_http_app(app) -> None:
    """While tracing is on, a server span per request of the FastAPI `app` (OpenTelemetry's instrumentation),
    current while the request is handled: the SDK's call to the coordinator carries it on, so the HTTP request
    and the coordinator's request are one trace. None for `/health`, which probes poll; no span per ASGI send or
    receive (one per streamed chunk otherwise)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/health$", exclude_spans=["receive", "send"])


class SessionSteps:
    """A replica's spans for the steps its sessions have queued and not answered yet, oldest first per session:
    each a child of the coordinator's step span (the message's traceparent); each engine step links to the
    steps open while it runs (`links`). Nothing is recorded while tracing is off."""

    def __init__(self):
        self._open: dict[int, deque[trace.Span]] = {}
        self._sessions = itertools.count()

    def session(self) -> int:
        """A new session's key (known before its open, whose prefill is a step too)."""
        return next(self._sessions)

    def start(self, key: int, name: str, parent: str, attributes: dict | None = None) -> None:
        if _enabled:
            span = TRACER.start_span(name, context=parent_from(parent), attributes=attributes)
            self._open.setdefault(key, deque()).append(span)

    def finish(self, key: int, attributes: dict | None = None) -> None:
        """The oldest open step of session `key` was answered."""
        spans = self._open.get(key)
        if spans:
            span = spans.popleft()
            if attributes:
                span.set_attributes(attributes)
            span.end()

    def close(self, key: int, error: BaseException | None = None) -> None:
        """Session `key` ended: its steps still open end too (failed with `error`, if given: the exception that
        ended the session; not a generator's close)."""
        for span in self._open.pop(key, ()):
            if error is None or isinstance(error, GeneratorExit):
                span.end()
            else:
                end_with_error(span, type(error).__name__, str(error))

    def links(self) -> list[trace.Link]:
        """Links to every step open now (one sent ahead is open across the engine step before it and its own)."""
        return [trace.Link(span.get_span_context()) for spans in self._open.values() for span in spans]
