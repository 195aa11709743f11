"""The services' metrics: what each records, the scrape endpoint (`--metrics-port`) and the OTLP export.

The instruments are OpenTelemetry ones, read by two readers of one meter provider per service: the Prometheus
reader behind the scrape endpoint, and, when the `OTEL_*` variables ask for metrics (`otel_env`), a periodic
OTLP/gRPC export (every `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by default). Both carry the same cumulative
values. The instruments' names are the OpenTelemetry ones (`gen_ai.server.time_to_first_token`, unit `s`);
the scrape shows them as the OpenTelemetry-to-Prometheus rules (the collector's too) name them: dots to
underscores, the unit as a suffix, `_total` on counters. Those Prometheus names, types and labels are the
"Metrics" table of docs/deployment.md (the Grafana dashboard reads them; a test checks this module against
the table). The `gen_ai.*` histograms are the GenAI semantic conventions' server metrics with their
recommended bucket boundaries; the speculation counters are vLLM's `spec_decode` ones, so the usual
acceptance charts carry over.

Each service has a meter provider and a registry of its own (tests run several services in one process); the
registry also holds the process's own collectors (scrape only), and prometheus-client's HTTP server, a daemon
thread, serves it: a scrape reads the instruments' aggregates only, never the engine.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server

from adaspec.service_runtime.otel_env import export_requested, exporters, service_resource
from adaspec.service_runtime.port_file import write_address

if TYPE_CHECKING:  # the HTTP API declares its arguments from here and has no load store
    from adaspec.loadstore import ReplicaLoad

# OpenTelemetry GenAI semantic conventions, recommended explicit bucket boundaries (seconds)
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# one engine step: a draft forward on a GPU is ~1 ms, a long prefill on a CPU seconds
STEP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
DRAFT_LENGTH_BUCKETS = tuple(float(k) for k in range(33))  # k = 0 ... 32, one bucket each

log = logging.getLogger(__name__)


def add_metrics_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics on this port (deployments use 9464; 0: any free port; "
                             "default: no endpoint)")
    parser.add_argument("--metrics-port-file", help="write the metrics endpoint's bound HOST:PORT to this file")


def new_registry() -> CollectorRegistry:
    """A service's registry, with the process's CPU, memory, file descriptors and garbage collections."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return registry


def new_meter(service: str, registry: CollectorRegistry) -> Meter:
    """A meter of a provider of `service`'s own, read into `registry` at each scrape and, when the environment
    asks for it, exported over OTLP (or to stdout: `OTEL_METRICS_EXPORTER=console`)."""
    # no target_info series and no otel_scope_* labels: the scrape keeps the planned names and labels
    readers: list[MetricReader] = [PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False,
                                                          registry=registry)]
    if export_requested("metrics"):
        chosen = exporters("metrics")
        if "otlp" in chosen:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        if "console" in chosen:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        log.info("metrics export", extra={"exporters": sorted(chosen)})
    # shut down at exit (the provider's default): the periodic readers export once more first
    return MeterProvider(metric_readers=readers, resource=service_resource(service)).get_meter("adaspec")


def serve_metrics(registry: CollectorRegistry, host: str, port: int | None, port_file: str | None = None):
    """Start the scrape endpoint (None: none) and return its server (`shutdown()` stops it)."""
    if port is None:
        return None
    server, _ = start_http_server(port, addr=host, registry=registry)
    address = f"{host}:{server.server_port}"
    write_address(port_file, address)
    log.info("metrics endpoint", extra={"address": f"http://{address}/metrics"})
    return server


class CoordinatorMetrics:
    """Per request and per speculation step, as the coordinator sees them."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        meter = new_meter("coordinator", self.registry)
        histogram = meter.create_histogram
        self.ttft = histogram("gen_ai.server.time_to_first_token", "s", "Time from a request's arrival to its first "
                              "output token", explicit_bucket_boundaries_advisory=TTFT_BUCKETS_S)
        self.tpot = histogram("gen_ai.server.time_per_output_token", "s", "A request's mean time per output token "
                              "after the first", explicit_bucket_boundaries_advisory=TPOT_BUCKETS_S)
        self.duration = histogram("gen_ai.server.request.duration", "s", "A request's duration, arrival to last token",
                                  explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S)
        self.requests = meter.create_counter("adaspec.requests", "{request}", "Finished requests")
        self.slo_met = meter.create_counter("adaspec.slo_met", "{request}", "Finished requests that met their TTFT "
                                            "and TPOT targets")
        self.drafts = meter.create_counter("adaspec.spec_decode.num_drafts", "{step}", "Verify steps that carried "
                                           "draft tokens")
        self.draft_tokens = meter.create_counter("adaspec.spec_decode.num_draft_tokens", "{token}",
                                                 "Draft tokens proposed")
        self.accepted_tokens = meter.create_counter("adaspec.spec_decode.num_accepted_tokens", "{token}",
                                                    "Draft tokens accepted")
        self.draft_length = histogram("adaspec.draft_length", "{token}", "k chosen per request per step (0 included)",
                                      explicit_bucket_boundaries_advisory=DRAFT_LENGTH_BUCKETS)

    def step(self, pool: str, policy: str, draft_tokens: int, accepted_tokens: int) -> None:
        labels = {"pool": pool, "policy": policy}
        self.draft_length.record(draft_tokens, labels)
        if draft_tokens:
            self.drafts.add(1, labels)
            self.draft_tokens.add(draft_tokens, labels)
            self.accepted_tokens.add(accepted_tokens, labels)

    def finished(self, policy: str, ttft_s: float, tpot_s: float | None, duration_s: float, slo_met: bool) -> None:
        """`tpot_s`: None for a request of one output token (it has no time per output token)."""
        labels = {"policy": policy}
        self.ttft.record(ttft_s, labels)
        if tpot_s is not None:
            self.tpot.record(tpot_s, labels)
        self.duration.record(duration_s, labels)
        self.requests.add(1, labels)
        if slo_met:
            self.slo_met.add(1, labels)


class ReplicaMetrics:
    """A verify or draft replica's load (set from its snapshot) and engine steps."""

    def __init__(self, kind: str, replica_id: str, pool: str, registry: CollectorRegistry | None = None):
        """`kind`: "verify" or "draft", the service its telemetry names."""
        self.registry = registry if registry is not None else new_registry()
        meter, self.labels = new_meter(kind, self.registry), {"replica": replica_id, "pool": pool}
        self.sessions = meter.create_gauge("adaspec.replica.sessions", "{session}", "Open sessions")
        self.queued_tokens = meter.create_gauge("adaspec.replica.queued_tokens", "{token}", "Committed tokens not yet "
                                                "in the KV cache (prompts waiting for prefill; on a draft replica "
                                                "also catch-up tokens)")
        self.kv_usage = meter.create_gauge("adaspec.replica.kv_usage_ratio", "1", "Share of KV cache blocks in use "
                                           "(0-1)")
        self.step_duration = meter.create_histogram("adaspec.engine.step.duration", "s", "One engine step",
                                                    explicit_bucket_boundaries_advisory=STEP_BUCKETS_S)

    def update(self, load: ReplicaLoad) -> None:
        self.sessions.set(load.sessions, self.labels)
        self.queued_tokens.set(load.queued_tokens, self.labels)
        if load.total_kv_blocks:
            self.kv_usage.set(1.0 - load.free_kv_blocks / load.total_kv_blocks, self.labels)

    def step(self, elapsed_ms: float) -> None:
        self.step_duration.record(elapsed_ms / 1e3, self.labels)
