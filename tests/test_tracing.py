"""OpenTelemetry export from a real stack (three services and the HTTP API) over real OTLP/gRPC to a receiver
inside this test. Traces: one per request from the caller's span, or the HTTP API's server span, through the
coordinator's request and step spans to each replica's step spans, engine steps linked to the steps they
served, the trace id returned to the caller, cancellation still reaching the services, and nothing recorded
with tracing off. Metrics: the values exported over OTLP are the scrape endpoints' after a known workload."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import time
from unittest import mock

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from adaspec import AsyncClient, Client
from adaspec.service_runtime import tracing
from adaspec.service_runtime.logs import JsonFormatter
from adaspec.service_runtime.metrics import CoordinatorMetrics
from adaspec.service_runtime.otel_env import export_requested
from adaspec.stack import Stack, StackConfig
from benchmarks.otlp_receiver import OtlpReceiver
from tests.test_services_small import scrape


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    receiver = OtlpReceiver()
    receiver.start()
    env = {**receiver.exporter_env(span_delay_ms=100), "OTEL_METRIC_EXPORT_INTERVAL": "300"}
    stack = Stack(StackConfig(http=True, metrics=True, log_dir=str(tmp_path_factory.mktemp("traced-logs"))))
    try:
        with mock.patch.dict(os.environ, env):  # the services' environment
            stack.start()
        yield stack, receiver
    finally:
        stack.stop()  # before the receiver: the services flush their last spans as they exit
        receiver.stop()


def wait_for(condition, timeout_s: float = 15.0, failure=lambda: "the spans did not arrive"):
    """Poll `condition` until it is truthy and return its value; on timeout fail with `failure()`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, failure()
        time.sleep(0.1)
    return value


def test_one_trace_per_request_across_the_three_services(traced):
    stack, receiver = traced
    caller = TracerProvider().get_tracer("caller")  # the caller's own tracing (not installed globally)

    async def one(client, prompt):
        with caller.start_as_current_span("caller") as span:
            completion = await client.generate(prompt, max_tokens=10, temperature=0, ignore_eos=True,
                                               policy="fixed:2")
            return f"{span.get_span_context().trace_id:032x}", f"{span.get_span_context().span_id:016x}", completion

    async def two():  # concurrently, so their sessions share the replicas' links and engine steps
        async with AsyncClient(stack.address) as client:
            return await asyncio.gather(one(client, "def f():"), one(client, "import os"))

    runs = asyncio.run(two())
    assert runs[0][0] != runs[1][0]
    for trace_id, caller_span, completion in runs:
        stats = completion.stats
        assert stats.trace_id == trace_id  # returned to the caller: its own trace goes on in the service
        spans = wait_for(lambda trace_id=trace_id, stats=stats: (s := receiver.of_trace(trace_id))
                         and sum(x["name"] == "verify step" for x in s) >= stats.steps
                         and any(x["name"].startswith("text_completion") for x in s) and s)
        by_id = {s["span_id"]: s for s in spans}
        assert {s["service"] for s in spans} >= {"adaspec-coordinator", "adaspec-verify", "adaspec-draft"}

        (request,) = [s for s in spans if s["name"].startswith("text_completion")]
        assert request["name"] == "text_completion tiny-target" and request["service"] == "adaspec-coordinator"
        attributes = request["attributes"]
        assert attributes["gen_ai.operation.name"] == "text_completion"
        assert attributes["gen_ai.request.model"] == "tiny-target"
        assert attributes["gen_ai.request.max_tokens"] == 10 and attributes["gen_ai.request.temperature"] == 0
        assert attributes["gen_ai.usage.input_tokens"] == stats.prompt_tokens
        assert attributes["gen_ai.usage.output_tokens"] == stats.output_tokens == 10
        assert attributes["gen_ai.response.finish_reasons"] == ["length"]
        assert attributes["adaspec.policy"] == "fixed:2"
        # the gRPC instrumentation's span of the call sits between the caller's and the request's
        rpc = by_id[request["parent"]]
        assert rpc["service"] == "adaspec-coordinator" and "Generate" in rpc["name"] and rpc["parent"] == caller_span

        steps = [s for s in spans if s["name"] == "speculation step"]
        assert len(steps) >= stats.steps and all(s["parent"] == request["span_id"] for s in steps)
        for step in steps:
            assert step["attributes"]["adaspec.policy"] == "fixed:2"
            assert step["attributes"]["adaspec.step.k"] in (0, 1, 2)
        verified = [s for s in steps if "adaspec.step.stop" in s["attributes"]]
        assert len(verified) == stats.steps
        assert sum(s["attributes"]["adaspec.step.drafts"] for s in verified) == stats.draft_tokens
        assert sum(s["attributes"]["adaspec.step.accepted"] for s in verified) == stats.accepted_tokens
        assert {s["attributes"]["adaspec.step.stop"] for s in verified} <= {"max_tokens", "stop_rule", "k_0"}
        assert all(s["attributes"]["adaspec.step.verify_ms"] > 0 for s in verified)

        step_ids = {s["span_id"] for s in steps}
        for name, service in (("verify step", "adaspec-verify"), ("draft step", "adaspec-draft")):
            work = [s for s in spans if s["name"] == name]
            assert work and all(s["parent"] in step_ids and s["service"] == service for s in work), name
        (opened,) = [s for s in spans if s["name"] == "verify open"]
        assert opened["parent"] == request["span_id"]

        # each replica's engine steps are spans of their own, linked to the session steps they served
        verify_steps = {s["span_id"] for s in spans if s["name"] == "verify step"}
        draft_steps = {s["span_id"] for s in spans if s["name"] == "draft step"}
        with receiver.lock:
            engine = [s for s in receiver.spans if s["name"].endswith("engine step")]
        assert verify_steps <= {link for s in engine if s["name"] == "verify engine step" for link in s["links"]}
        assert draft_steps <= {link for s in engine if s["name"] == "draft engine step" for link in s["links"]}


def test_a_cancelled_request_is_cancelled_in_the_services_with_tracing_on(traced):
    """The caller stops reading mid-stream: the call is cancelled through the gRPC instrumentation, the
    request's span ends failed, and the replicas close its sessions."""
    stack, receiver = traced
    with Client(stack.address) as client:
        stream = client.stream("def f():", max_tokens=1500, temperature=0, ignore_eos=True, policy="fixed:2")
        for _, chunk in zip(range(3), stream, strict=False):
            pass
        stream.close()
    deadline = time.monotonic() + 10
    while stack.replica_load("verify-0").sessions or stack.replica_load("draft-0").sessions:
        assert time.monotonic() < deadline, "the cancelled request's sessions stayed open"
        time.sleep(0.1)
    cancelled = wait_for(lambda: [s for s in receiver.spans if s["name"].startswith("text_completion")
                                  and s["attributes"].get("error.type") == "CancelledError"])
    assert cancelled[0]["status"] == 2  # STATUS_CODE_ERROR


SPAN_KIND_SERVER = 2  # OTLP's Span.SpanKind


def http_completion(stack: Stack, **fields) -> httpx.Response:
    body = {"prompt": "def f():", "max_tokens": 8, "temperature": 0, "ignore_eos": True, "policy": "fixed:2"}
    return httpx.post(f"{stack.http_url}/v1/completions", json={**body, **fields}, timeout=60)


def http_server_span(spans: list[dict]) -> dict | None:
    """The HTTP API's server span of a completion among `spans` (None: not exported yet)."""
    return next((s for s in spans if s["service"] == "adaspec-http" and s["kind"] == SPAN_KIND_SERVER
                 and s["name"] == "POST /v1/completions"), None)


def test_an_http_completion_is_one_trace_from_the_http_api_to_the_replicas(traced):
    """The HTTP API's server span is the trace's root and the parent of the coordinator's `Generate` span: the
    SDK carried its context over gRPC."""
    stack, receiver = traced
    response = http_completion(stack)
    assert response.status_code == 200, response.text
    stats = response.json()["adaspec"]
    # every process exports on its own schedule: wait for each one's spans, the coordinator's included
    spans = wait_for(lambda: (s := receiver.of_trace(stats["trace_id"])) and http_server_span(s)
                     and sum(x["name"] == "verify step" for x in s) >= stats["steps"]
                     and any(x["service"] == "adaspec-coordinator" and "Generate" in x["name"] for x in s)
                     and any(x["name"].startswith("text_completion") for x in s) and s)
    http = http_server_span(spans)
    assert http["parent"] == "" and http["attributes"]["http.route"] == "/v1/completions"
    # the instrumentation's older HTTP conventions unless OTEL_SEMCONV_STABILITY_OPT_IN=http asks for the stable
    assert http["attributes"].get("http.response.status_code", http["attributes"].get("http.status_code")) == 200
    (rpc,) = [s for s in spans if s["service"] == "adaspec-coordinator" and "Generate" in s["name"]]
    assert rpc["parent"] == http["span_id"]
    (request,) = [s for s in spans if s["name"].startswith("text_completion")]
    assert request["parent"] == rpc["span_id"] and request["attributes"]["gen_ai.usage.output_tokens"] == 8
    assert {s["service"] for s in spans} == {"adaspec-http", "adaspec-coordinator", "adaspec-verify", "adaspec-draft"}


def test_streamed_http_completions_are_traced_and_leaving_one_cancels_it(traced):
    """With the ASGI instrumentation in front: a whole stream ends with [DONE] in its own trace; a client that
    leaves mid-stream still cancels the request in every service."""
    stack, receiver = traced
    with httpx.stream("POST", f"{stack.http_url}/v1/completions", timeout=60,
                      json={"prompt": "def f():", "max_tokens": 8, "temperature": 0, "stream": True}) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    trace_id = json.loads(events[-2])["adaspec"]["trace_id"]
    spans = wait_for(lambda: (s := receiver.of_trace(trace_id)) and http_server_span(s)
                     and any(x["name"].startswith("text_completion") for x in s) and s)
    assert http_server_span(spans)["parent"] == ""

    with httpx.stream("POST", f"{stack.http_url}/v1/completions", timeout=60,
                      json={"prompt": "def f():", "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
                            "stream": True}) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 10
    while stack.replica_load("verify-0").sessions or stack.replica_load("draft-0").sessions:
        assert time.monotonic() < deadline, "the request the HTTP client left stayed open"
        time.sleep(0.1)

    def cancelled_behind_http():
        with receiver.lock:
            cancelled = {s["trace_id"] for s in receiver.spans if s["name"].startswith("text_completion")
                         and s["attributes"].get("error.type") == "CancelledError"}
            return [s for s in receiver.spans if s["trace_id"] in cancelled and s["service"] == "adaspec-http"]

    wait_for(cancelled_behind_http)


def as_scraped(name: str, point: dict) -> dict[tuple[str, tuple], float]:
    """An OTLP point as the Prometheus samples it becomes under the OpenTelemetry-to-Prometheus naming rules."""
    base = name.replace(".", "_") + ("_seconds" if point["unit"] == "s" else "")
    if point["kind"] == "sum":
        return {(f"{base}_total", ()): point["value"]}
    if point["kind"] == "gauge":
        return {(base, ()): point["value"]}
    cumulative = itertools.accumulate(point["bucket_counts"])
    buckets = {(f"{base}_bucket", (("le", le),)): n for le, n in zip([*point["explicit_bounds"], math.inf],
                                                                      cumulative, strict=True)}
    return {(f"{base}_count", ()): point["count"], (f"{base}_sum", ()): point["sum"], **buckets}


def otlp_samples(receiver: OtlpReceiver, service: str) -> dict[tuple[str, tuple], float]:
    """Every AdaSpec sample `service` last exported over OTLP, keyed as `scrape` keys them (`le` as a float)."""
    with receiver.lock:
        series = dict(receiver.metrics.get(f"adaspec-{service.split('-')[0]}", {}))
    samples = {}
    for (name, attributes), point in series.items():
        for (sample, le), value in as_scraped(name, point).items():
            samples[(sample, tuple(sorted((*attributes, *le))))] = value
    return samples


def adaspec_samples(scraped: dict[tuple[str, tuple], float]) -> dict[tuple[str, tuple], float]:
    """The AdaSpec samples of a scrape (not the process's own), `le` as a float to compare with OTLP's bounds."""
    return {(name, tuple(sorted((k, float(v) if k == "le" else v) for k, v in labels))): value
            for (name, labels), value in scraped.items()
            if name.startswith(("adaspec_", "gen_ai_")) and not name.endswith("_created")}


def exported_as_scraped(stack: Stack, receiver: OtlpReceiver, service: str, timeout_s: float = 20.0) -> None:
    """Wait until `service`'s last OTLP export (every 0.3 s) is what its scrape endpoint shows. Each try scrapes
    anew: a replica's gauges follow its load at its next heartbeat (0.5 s, later on a loaded machine), so a scrape
    taken once may be overtaken. On timeout, the samples that differ (beyond the last bits of a float)."""

    def differing() -> dict:
        scraped = adaspec_samples(scrape(stack, service))
        exported = otlp_samples(receiver, service)
        # each reader sums on its own and the scrape goes through text: sums may differ in the last bit
        return {key: (exported.get(key), scraped.get(key)) for key in exported.keys() | scraped.keys()
                if key not in exported or key not in scraped
                or not math.isclose(exported[key], scraped[key], rel_tol=1e-12, abs_tol=1e-12)}

    wait_for(lambda: not differing(), timeout_s,
             failure=lambda: f"{service}: exported over OTLP vs scraped: {differing()}")


def test_metrics_exported_over_otlp_are_the_scraped_ones(traced):
    """After a known workload (three requests, two policies), each service's OTLP export carries exactly what
    its scrape endpoint shows, and the coordinator's counts and histograms are the requests' own stats."""
    stack, receiver = traced
    services = ("coordinator", "verify-0", "draft-0")
    before = {name: adaspec_samples(scrape(stack, name)) for name in services}
    with Client(stack.address, timeout=60) as client:
        runs = [(policy, client.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True, policy=policy).stats)
                for policy, prompt in (("fixed:2", "def f():"), ("fixed:2", "import os"), ("none", "class A:"))]
    for name in services:
        exported_as_scraped(stack, receiver, name)

    exported = otlp_samples(receiver, "coordinator")
    for policy in ("fixed:2", "none"):
        stats = [s for p, s in runs if p == policy]

        def delta(sample, stats_policy=policy, **labels):
            key = (sample, tuple(sorted({"policy": stats_policy, **labels}.items())))
            return exported[key] - before["coordinator"].get(key, 0.0)

        assert delta("adaspec_requests_total") == len(stats)
        assert delta("gen_ai_server_time_to_first_token_seconds_count") == len(stats)
        assert delta("gen_ai_server_time_to_first_token_seconds_sum") == pytest.approx(
            sum(s.ttft_ms for s in stats) / 1e3, rel=1e-6)
        assert delta("adaspec_draft_length_count", pool="default") == sum(s.steps for s in stats)
        assert delta("adaspec_draft_length_sum", pool="default") == sum(s.draft_tokens for s in stats)
    assert sum(s.output_tokens for _, s in runs) == 36
    steps = ("adaspec_engine_step_duration_seconds_count", (("pool", "default"), ("replica", "verify-0")))
    assert otlp_samples(receiver, "verify-0")[steps] - before["verify-0"].get(steps, 0.0) >= 12  # `none`'s 12 tokens


def test_log_lines_carry_the_current_trace_and_span():
    formatter = JsonFormatter("test")
    record = logging.LogRecord("adaspec", logging.INFO, __file__, 1, "hello", (), None)
    assert "trace_id" not in json.loads(formatter.format(record))
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        entry = json.loads(formatter.format(record))
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert entry["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_tracing_is_off_unless_asked_and_then_records_nothing():
    assert not tracing.tracing_requested({})
    assert not tracing.tracing_requested({"OTEL_SERVICE_NAME": "x"})
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                                          "OTEL_TRACES_EXPORTER": "none"})
    assert tracing.tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    with mock.patch.dict(os.environ, clear=True):
        tracing.configure_tracing("test")
    assert not tracing.enabled() and tracing.rpc_server_interceptor() is None
    steps = tracing.SessionSteps()
    key = steps.session()
    steps.start(key, "verify step", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert steps.links() == []  # no span made, nothing to link


def test_metrics_are_exported_only_when_asked():
    assert not export_requested("metrics", {})
    assert export_requested("metrics", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert export_requested("metrics", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4317"})
    assert not export_requested("metrics", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})
    assert not export_requested("metrics", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                                            "OTEL_METRICS_EXPORTER": "none"})
    assert not export_requested("metrics", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                                            "OTEL_SDK_DISABLED": "true"})


def test_a_bad_exporter_name_is_refused():
    with mock.patch.dict(os.environ, {"OTEL_TRACES_EXPORTER": "zipkin"}), pytest.raises(ValueError, match="zipkin"):
        tracing.configure_tracing("test")
    with mock.patch.dict(os.environ, {"OTEL_METRICS_EXPORTER": "prometheus"}), pytest.raises(ValueError,
                                                                                           match="prometheus"):
        CoordinatorMetrics()
