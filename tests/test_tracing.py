"""Tracing across the three services, exported over real OTLP/gRPC to a receiver inside this test: one trace
per request from the caller's span through the coordinator's request and step spans to each replica's step
spans, engine steps linked to the steps they served, the trace id returned to the caller, cancellation still
reaching the services, and nothing recorded with tracing off."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from unittest import mock

import pytest
from opentelemetry.sdk.trace import TracerProvider

from adaspec import AsyncClient, Client
from adaspec.service_runtime import tracing
from adaspec.service_runtime.logs import JsonFormatter
from adaspec.stack import Stack, StackConfig
from benchmarks.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    receiver = OtlpReceiver()
    port = receiver.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    stack = Stack(StackConfig(log_dir=str(tmp_path_factory.mktemp("traced-logs"))))
    try:
        with mock.patch.dict(os.environ, env):  # the services' environment
            stack.start()
        yield stack, receiver
    finally:
        stack.stop()  # before the receiver: the services flush their last spans as they exit
        receiver.stop()


def wait_for(condition, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "the spans did not arrive"
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
        spans = wait_for(lambda: (s := receiver.of_trace(trace_id)) and sum(x["name"] == "verify step" for x in s)
                         >= stats.steps and any(x["name"].startswith("text_completion") for x in s) and s)
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


def test_a_bad_exporter_name_is_refused():
    with mock.patch.dict(os.environ, {"OTEL_TRACES_EXPORTER": "zipkin"}), pytest.raises(ValueError, match="zipkin"):
        tracing.configure_tracing("test")
