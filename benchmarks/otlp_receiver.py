"""An OTLP/gRPC receiver in the process: every span the services export to it, and the latest point of each of
their metrics' series, as plain dicts.

Used by `bench_tracing.py` and `tests/test_tracing.py` in place of a collector, Jaeger and a metrics backend,
which do not run here.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans: list[dict] = []
        # {service: {(metric name, sorted attributes): its latest point}}; the services export cumulative values
        self.metrics: dict[str, dict[tuple[str, tuple], dict]] = {}
        self.lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port: int | None = None  # once started

    def start(self) -> int:
        """Listen on a free loopback port and return it (`http://127.0.0.1:PORT` is the exporters' endpoint)."""
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self.port

    def exporter_env(self, span_delay_ms: int) -> dict[str, str]:
        """The environment under which a service exports here: OTLP/gRPC in plain text, spans every `span_delay_ms`
        (the SDK's default of 5 s would keep a benchmark or a test waiting)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": str(span_delay_ms)}

    def stop(self) -> None:
        self._server.stop(0)

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    self.spans += [{
                        "service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "status": span.status.code, "kind": span.kind, "links": [link.span_id.hex() for link in span.links],
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                    } for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


    def metric(self, service: str, name: str, **attributes) -> dict | None:
        """The latest point of `service`'s series `name` with exactly these attributes (None: none exported)."""
        with self.lock:
            return self.metrics.get(service, {}).get((name, tuple(sorted(attributes.items()))))


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The metrics half of the receiver (its `Export` is another RPC's than the traces')."""

    def __init__(self, receiver: OtlpReceiver):
        self.receiver = receiver

    def Export(self, request, context):
        with self.receiver.lock:
            for resource_metrics in request.resource_metrics:
                service = next(a.value.string_value for a in resource_metrics.resource.attributes
                               if a.key == "service.name")
                series = self.receiver.metrics.setdefault(service, {})
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        data = getattr(metric, kind)
                        for point in data.data_points:
                            labels = tuple(sorted((a.key, _value(a.value)) for a in point.attributes))
                            series[(metric.name, labels)] = {"kind": kind, "unit": metric.unit, **_point(kind, point)}
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _point(kind: str, point) -> dict:
    if kind == "histogram":
        return {"count": point.count, "sum": point.sum, "bucket_counts": list(point.bucket_counts),
                "explicit_bounds": list(point.explicit_bounds)}
    return {"value": getattr(point, point.WhichOneof("value"))}


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)
