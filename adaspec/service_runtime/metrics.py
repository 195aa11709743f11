"""The services' Prometheus metrics: what each records, and the scrape endpoint (`--metrics-port`).

The names, types and labels are the "Metrics plan" table of docs/deployment.md (the Grafana dashboard reads
them; a test checks this module against the table). The `gen_ai_*` histograms are the OpenTelemetry GenAI
semantic conventions' server metrics under their Prometheus names, with the conventions' recommended bucket
boundaries; the speculation counters are vLLM's `spec_decode` ones, so the usual acceptance charts carry over.

Each service keeps a registry of its own (tests run several services in one process) and serves it with
prometheus-client's HTTP server, a daemon thread: a scrape reads the metric objects only, never the engine.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

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
        r = self.registry
        self.ttft = Histogram("gen_ai_server_time_to_first_token_seconds", "Time from a request's arrival to its "
                              "first output token", ["policy"], buckets=TTFT_BUCKETS_S, registry=r)
        self.tpot = Histogram("gen_ai_server_time_per_output_token_seconds", "A request's mean time per output "
                              "token after the first", ["policy"], buckets=TPOT_BUCKETS_S, registry=r)
        self.duration = Histogram("gen_ai_server_request_duration_seconds", "A request's duration, arrival to last "
                                  "token", ["policy"], buckets=DURATION_BUCKETS_S, registry=r)
        self.requests = Counter("adaspec_requests", "Finished requests", ["policy"], registry=r)
        self.slo_met = Counter("adaspec_slo_met", "Finished requests that met their TTFT and TPOT targets",
                               ["policy"], registry=r)
        labels = ["pool", "policy"]
        self.drafts = Counter("adaspec_spec_decode_num_drafts", "Verify steps that carried draft tokens", labels,
                              registry=r)
        self.draft_tokens = Counter("adaspec_spec_decode_num_draft_tokens", "Draft tokens proposed", labels,
                                    registry=r)
        self.accepted_tokens = Counter("adaspec_spec_decode_num_accepted_tokens", "Draft tokens accepted", labels,
                                       registry=r)
        self.draft_length = Histogram("adaspec_draft_length", "k chosen per request per step (0 included)", labels,
                                      buckets=DRAFT_LENGTH_BUCKETS, registry=r)

    def step(self, pool: str, policy: str, draft_tokens: int, accepted_tokens: int) -> None:
        self.draft_length.labels(pool, policy).observe(draft_tokens)
        if draft_tokens:
            self.drafts.labels(pool, policy).inc()
            self.draft_tokens.labels(pool, policy).inc(draft_tokens)
            self.accepted_tokens.labels(pool, policy).inc(accepted_tokens)

    def finished(self, policy: str, ttft_s: float, tpot_s: float | None, duration_s: float, slo_met: bool) -> None:
        """`tpot_s`: None for a request of one output token (it has no time per output token)."""
        self.ttft.labels(policy).observe(ttft_s)
        if tpot_s is not None:
            self.tpot.labels(policy).observe(tpot_s)
        self.duration.labels(policy).observe(duration_s)
        self.requests.labels(policy).inc()
        if slo_met:
            self.slo_met.labels(policy).inc()


class ReplicaMetrics:
    """A verify or draft replica's load (set from its snapshot) and engine steps."""

    def __init__(self, replica_id: str, pool: str, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        r, labels = self.registry, ["replica", "pool"]
        self.sessions = Gauge("adaspec_replica_sessions", "Open sessions", labels, registry=r).labels(replica_id, pool)
        self.queued_tokens = Gauge("adaspec_replica_queued_tokens", "Committed tokens not yet in the KV cache (prompts "
                                   "waiting for prefill; on a draft replica also catch-up tokens)", labels,
                                   registry=r).labels(replica_id, pool)
        self.kv_usage = Gauge("adaspec_replica_kv_usage_ratio", "Share of KV cache blocks in use (0-1)", labels,
                              registry=r).labels(replica_id, pool)
        self.step_duration = Histogram("adaspec_engine_step_duration_seconds", "One engine step", labels,
                                       buckets=STEP_BUCKETS_S, registry=r).labels(replica_id, pool)

    def update(self, load: ReplicaLoad) -> None:
        self.sessions.set(load.sessions)
        self.queued_tokens.set(load.queued_tokens)
        if load.total_kv_blocks:
            self.kv_usage.set(1.0 - load.free_kv_blocks / load.total_kv_blocks)

    def step(self, elapsed_ms: float) -> None:
        self.step_duration.observe(elapsed_ms / 1e3)
