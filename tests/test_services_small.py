"""A small stack on the in-process load store (one verify replica of one session plus one queued, one
draft), each running its engine in a process of its own: capacity, a draft that stalls, a draft that dies
mid-request, and the last verify replica's engine process dying mid-stream.

Its own module, so the larger Redis-backed stack of `test_services.py` is down before this one starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adaspec import AsyncClient, Client, SamplingParams
from adaspec.errors import InvalidArgument, ResourceExhausted, Unavailable, from_rpc_error
from adaspec.service_runtime.convert import params_to_proto
from adaspec.service_runtime.transport_security import channel
from adaspec.stack import Stack, StackConfig
from adaspec.v1 import verify_pb2, verify_pb2_grpc
from tests.conftest import HELD_OUT_SNIPPETS
from tests.test_services import replica_load


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    # engines in processes of their own (on CPU the default is a thread; `test_services.py` runs that)
    engine_process = ["--engine-core", "process"]
    config = StackConfig(verify_replicas=1, draft_replicas=1, draft_args=engine_process, metrics=True,
                         verify_args=["--max-num-seqs", "1", "--max-waiting", "1", *engine_process],
                         coordinator_args=["--ttl-s", "1.5", "--draft-timeout-s", "2"],
                         log_dir=str(tmp_path_factory.mktemp("small-logs")))
    with Stack(config) as stack:
        yield stack
    assert set(stack.exit_codes().values()) == {0}, f"graceful SIGTERM exit expected:\n{stack.exit_report()}"


def scrape(stack: Stack, name: str) -> dict[tuple[str, tuple], float]:
    """Every sample of service `name`'s Prometheus endpoint: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(stack.metrics_url(name), timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_a_known_workload(small_stack):
    """Each service's scrape endpoint, before and after three requests: the coordinator's request, SLO and
    speculation counts match the requests' own stats; the replicas counted their engine steps and show no
    session left once the requests are done."""
    before = {name: scrape(small_stack, name) for name in ("coordinator", "verify-0", "draft-0")}
    with Client(small_stack.address, max_retries=0, timeout=60) as client:
        runs = [(policy, client.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True, policy=policy).stats)
                for policy, prompt in (("fixed:2", "def f():"), ("fixed:2", "import os"), ("none", "class A:"))]
    time.sleep(1.0)  # the replicas' gauges follow their load every heartbeat (0.5 s)
    after = {name: scrape(small_stack, name) for name in before}

    def delta(service, sample, **labels):
        key = (sample, tuple(sorted(labels.items())))
        return after[service].get(key, 0.0) - before[service].get(key, 0.0)

    for policy in ("fixed:2", "none"):
        stats = [s for p, s in runs if p == policy]
        spec = {"pool": "default", "policy": policy}
        assert delta("coordinator", "adaspec_requests_total", policy=policy) == len(stats)
        assert delta("coordinator", "adaspec_slo_met_total", policy=policy) == sum(s.slo_met for s in stats)
        for histogram in ("time_to_first_token", "time_per_output_token", "request_duration"):
            assert delta("coordinator", f"gen_ai_server_{histogram}_seconds_count", policy=policy) == len(stats)
        assert delta("coordinator", "gen_ai_server_time_to_first_token_seconds_sum", policy=policy) == (
            pytest.approx(sum(s.ttft_ms for s in stats) / 1e3, rel=1e-6))
        assert delta("coordinator", "adaspec_draft_length_count", **spec) == sum(s.steps for s in stats)
        assert delta("coordinator", "adaspec_draft_length_sum", **spec) == sum(s.draft_tokens for s in stats)
        assert delta("coordinator", "adaspec_spec_decode_num_draft_tokens_total", **spec) == sum(
            s.draft_tokens for s in stats)
        assert delta("coordinator", "adaspec_spec_decode_num_accepted_tokens_total", **spec) == sum(
            s.accepted_tokens for s in stats)
    drafted = [s for p, s in runs if p == "fixed:2"]
    assert sum(s.draft_tokens for s in drafted) > 0
    drafts = delta("coordinator", "adaspec_spec_decode_num_drafts_total", pool="default", policy="fixed:2")
    assert sum(s.draft_tokens for s in drafted) / 2 <= drafts <= sum(s.steps for s in drafted)  # k <= 2 per draft
    for name, pool in (("verify-0", "default"), ("draft-0", "draft")):
        labels = {"replica": name, "pool": pool}
        least_steps = 12 if name == "verify-0" else 2  # `none`'s 12 tokens take 12 verify steps; drafts took some
        assert delta(name, "adaspec_engine_step_duration_seconds_count", **labels) >= least_steps
        assert after[name][("adaspec_replica_sessions", tuple(sorted(labels.items())))] == 0
        assert after[name][("adaspec_replica_kv_usage_ratio", tuple(sorted(labels.items())))] == 0
        assert after[name][("process_resident_memory_bytes", ())] > 0


def test_a_prompt_of_invalid_utf8_gets_invalid_argument(small_stack):
    async def send():
        async with grpc.aio.insecure_channel(small_stack.address) as channel:
            generate = channel.unary_stream("/adaspec.v1.Coordinator/Generate", request_serializer=None,
                                            response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await generate(b"\x0a\x03ab\xff", timeout=10).read()  # prompt (field 1): "ab" and a stray byte
            return refused.value

    error = asyncio.run(send())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "bad UTF-8" in error.details()


def test_a_verify_open_with_a_negative_slo_gets_invalid_argument_naming_the_field(small_stack):
    async def open_session():
        async with channel(small_stack.processes["verify-0"].address, small_stack.tls) as replica:
            session = verify_pb2_grpc.VerifyStub(replica).Session(timeout=10)
            await session.write(verify_pb2.VerifyRequest(open=verify_pb2.VerifyOpen(
                prompt="def f():", params=params_to_proto(SamplingParams(max_tokens=4)), tpot_ms=-1.0)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await session.read()
            return refused.value

    error = from_rpc_error(asyncio.run(open_session()))
    assert type(error) is InvalidArgument and "tpot_ms must be >= 0" in error.message
    assert [field for field, _ in error.field_violations] == ["tpot_ms"]


def test_full_capacity_gets_resource_exhausted(small_stack):
    """One session running and one queued fill the replica (max_num_seqs 1 + max_waiting 1)."""

    async def fill_then_overflow():
        async with AsyncClient(small_stack.address, max_retries=0) as client:
            async def hold():
                async for _ in client.stream("def f():", max_tokens=2000, temperature=0, ignore_eos=True):
                    pass

            holders = [asyncio.create_task(hold()) for _ in range(2)]
            deadline = time.monotonic() + 30
            while replica_load(small_stack, "verify-0").sessions < 2:
                assert time.monotonic() < deadline, "the two holding requests were never admitted"
                await asyncio.sleep(0.05)
            try:
                with pytest.raises(ResourceExhausted) as caught:
                    await client.generate("def g():", max_tokens=4)
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
            return caught.value

    error = asyncio.run(fill_then_overflow())
    assert error.retry_delay is not None


def test_steps_at_k_0_do_not_wait_for_a_stalled_draft_and_a_drafting_request_drops_it(small_stack, bundled_engine):
    """The draft replica stops answering (SIGSTOP). A request whose every step is at k = 0 never waits for it:
    it finishes at once though its draft session is open there. One that drafts waits `--draft-timeout-s` for
    its first drafts, then goes on without the draft. Both outputs are the target's."""
    expected = bundled_engine.generate(["def f():"], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                                       policy="none")[0].token_ids
    draft = small_stack.processes["draft-0"].popen
    os.kill(draft.pid, signal.SIGSTOP)
    try:
        with Client(small_stack.address, max_retries=0, timeout=30) as client:
            start = time.monotonic()
            plain = client.generate("def f():", max_tokens=12, temperature=0, ignore_eos=True, policy="fixed:0")
            plain_s = time.monotonic() - start
            start = time.monotonic()
            drafting = client.generate("def f():", max_tokens=12, temperature=0, ignore_eos=True, policy="fixed:2")
            drafting_s = time.monotonic() - start
    finally:
        os.kill(draft.pid, signal.SIGCONT)
    assert plain.token_ids == drafting.token_ids == expected
    assert plain.stats.draft_replica == "draft-0" and plain.stats.draft_tokens == 0 and plain_s < 1.5
    assert drafting.stats.draft_replica == "" and drafting.stats.draft_tokens == 0 and drafting_s >= 2.0


def test_a_draft_dying_mid_request_degrades_to_plain_decoding(small_stack, bundled_engine):
    prompt = HELD_OUT_SNIPPETS[2]
    expected = bundled_engine.generate([prompt], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))[0]
    with Client(small_stack.address) as client:
        stream = client.stream(prompt, max_tokens=200, temperature=0, ignore_eos=True, policy="fixed:4")
        chunks = [next(stream)]
        small_stack.kill("draft-0")
        chunks += list(stream)
    assert [t for c in chunks for t in c.token_ids] == expected.token_ids


def engine_process(stack, name: str) -> int:
    """The pid of a replica's engine process (named `<kind>-core`, see `adaspec.service_runtime.engine_core`)."""
    service = stack.processes[name].popen.pid
    for task in os.listdir(f"/proc/{service}/task"):
        for child in open(f"/proc/{service}/task/{task}/children").read().split():
            if open(f"/proc/{child}/comm").read().strip().endswith("-core"):
                return int(child)
    raise LookupError(f"{name} has no engine process")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the engine process through /proc")
def test_the_last_verify_replicas_engine_dying_mid_stream_gets_unavailable_and_the_replica_exits(small_stack):
    """A crash inside the replica (its engine process), not of the whole replica: the replica says so to
    the request in flight and exits with an error, instead of serving without an engine."""
    replica = small_stack.processes["verify-0"]
    with Client(small_stack.address, max_retries=0) as client:
        stream = client.stream("def f():", max_tokens=2000, temperature=0, ignore_eos=True, policy="none")
        next(stream)
        os.kill(engine_process(small_stack, "verify-0"), signal.SIGKILL)
        with pytest.raises(Unavailable, match="verify-0"):
            for _ in stream:
                pass
        assert replica.popen.wait(15) != 0
        small_stack.killed.add("verify-0")  # its exit code is checked here, not by the fixture
        assert "its engine process exited" in replica.log_path.read_text()
        with pytest.raises(Unavailable):
            client.generate("def f():", max_tokens=4)
