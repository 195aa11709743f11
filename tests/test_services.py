"""The service stack over real gRPC: separate verify, draft and coordinator processes, a real redis-server.

One stack (two verify replicas, one draft, Redis load store) serves these tests; the replica-kill test
runs last on it. `test_services_small.py` has a small stack on the in-process store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adaspec import AsyncClient, Client, SamplingParams
from adaspec.errors import DeadlineExceeded, InvalidArgument
from adaspec.loadstore import RedisLoadStore
from adaspec.stack import Stack, StackConfig
from adaspec.v1 import common_pb2
from tests.conftest import HELD_OUT_SNIPPETS

TTL_S = 2.0
PROMPTS = [s + tail for tail in ("", "\n", "    ", "\n\n") for s in HELD_OUT_SNIPPETS][:32]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    replica = ["--ttl-s", str(TTL_S), "--heartbeat-s", "0.25"]
    config = StackConfig(verify_replicas=2, draft_replicas=1, redis="spawn", verify_args=replica,
                         coordinator_args=["--lease-s", "3"],
                         draft_args=replica, log_dir=str(tmp_path_factory.mktemp("stack-logs")))
    with Stack(config) as running:
        yield running
    assert set(running.exit_codes().values()) == {0}, f"graceful SIGTERM exit expected:\n{running.exit_report()}"


def replica_load(stack: Stack, name: str) -> common_pb2.ReplicaLoad:
    """A replica's own statistics, read from it directly (not through the store's heartbeat lag)."""
    return stack.replica_load(name)


def wait_for_baseline(stack: Stack, baseline: dict[str, int], timeout_s: float = 10.0) -> None:
    """Every live replica back to no sessions and all of its KV blocks free."""
    deadline = time.monotonic() + timeout_s
    while True:
        loads = {n: replica_load(stack, n) for n in baseline}
        if all(load.sessions == 0 and load.free_kv_blocks == baseline[n] for n, load in loads.items()):
            return
        assert time.monotonic() < deadline, f"sessions or KV blocks not released: {loads}"
        time.sleep(0.1)


def live_replicas(stack: Stack) -> dict[str, int]:
    return {n: replica_load(stack, n).total_kv_blocks for n, p in stack.processes.items()
            if n != "coordinator" and p.popen.poll() is None}


def test_every_service_reports_serving(stack):
    for process in stack.processes.values():
        with grpc.insecure_channel(process.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, process.name
    with Client(stack.address) as client:
        kinds = sorted(r.kind for r in client.cluster_state())
    assert kinds == ["draft", "verify", "verify"]


def test_32_concurrent_streams_match_the_offline_engine(stack, bundled_engine):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    expected = bundled_engine.generate(PROMPTS, params, policy="fixed:4")

    async def stream_all():
        async with AsyncClient(stack.address, timeout=120) as client:
            async def one(prompt):
                chunks = [c async for c in client.stream(prompt, max_tokens=24, temperature=0, ignore_eos=True,
                                                         policy="fixed:4")]
                return chunks
            return await asyncio.gather(*(one(p) for p in PROMPTS))

    results = asyncio.run(stream_all())
    for chunks, reference in zip(results, expected):
        assert [t for c in chunks for t in c.token_ids] == reference.token_ids
        assert "".join(c.text for c in chunks) == reference.text
        stats = chunks[-1].stats
        assert chunks[-1].finish_reason == "length" and stats.output_tokens == 24 and stats.draft_tokens > 0
        assert stats.prompt_tokens == len(reference.prompt_token_ids)
    assert {c[-1].stats.verify_replica for c in results} == {"verify-0", "verify-1"}, "both replicas take work"


def test_sampled_output_with_a_seed_matches_the_offline_engine(stack, bundled_engine):
    with Client(stack.address) as client:
        for i, prompt in enumerate(HELD_OUT_SNIPPETS[:4]):
            params = SamplingParams(max_tokens=16, temperature=1.0, top_k=20, seed=100 + i, ignore_eos=True)
            expected = bundled_engine.generate([prompt], params, policy="fixed:3")[0]
            got = client.generate(prompt, max_tokens=16, temperature=1.0, top_k=20, seed=100 + i, ignore_eos=True,
                                  policy="fixed:3")
            assert got.token_ids == expected.token_ids


def test_steps_sent_ahead_without_a_draft_match_the_offline_engine(stack, bundled_engine):
    """Policy none: the coordinator keeps the next empty step in flight, so one arrives after the final
    reply of every request; the replica ignores it, and the output and the released session are exact."""
    baseline = live_replicas(stack)
    cases = [  # (max_tokens, stop): finished by length after 1 and 20 tokens, and by a stop string
        (1, []), (20, []), (60, ["\n"]),
    ]
    reasons = set()
    with Client(stack.address) as client:
        for prompt in HELD_OUT_SNIPPETS[:3]:
            for max_tokens, stop in cases:
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
                expected = bundled_engine.generate([prompt], params, policy="none")[0]
                got = client.generate(prompt, max_tokens=max_tokens, temperature=0, stop=stop, policy="none")
                assert (got.token_ids, got.text, got.finish_reason) == \
                    (expected.token_ids, expected.text, expected.finish_reason)
                assert got.stats.draft_tokens == 0 and got.stats.steps == len(got.token_ids) - 1
                reasons.add(got.finish_reason)
    assert reasons == {"length", "stop"}
    wait_for_baseline(stack, baseline)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": [5] * 5000}, "prompt"),
    ({"prompt": [10**6]}, "prompt"),
    ({"max_tokens": 0}, "params.max_tokens"),
    ({"max_tokens": 10**6}, "params.max_tokens"),
    ({"temperature": -1.0}, "params.temperature"),
    ({"top_p": 0.0}, "params.top_p"),
    ({"policy": "turbo"}, "policy"),
    ({"policy": "fixed:99"}, "policy"),
    ({"ttft_ms": -5.0}, "slo.ttft_ms"),
])
def test_bad_requests_get_invalid_argument_naming_the_field(stack, kwargs, field):
    kwargs = {"prompt": "def f():", **kwargs}
    with Client(stack.address, max_retries=0) as client, pytest.raises(InvalidArgument) as caught:
        client.generate(kwargs.pop("prompt"), **kwargs)
    assert field in [f for f, _ in caught.value.field_violations], caught.value


def test_cancelling_mid_stream_closes_both_sessions_and_frees_kv(stack):
    baseline = live_replicas(stack)
    with Client(stack.address) as client:
        stream = client.stream("def main():", max_tokens=400, temperature=0, ignore_eos=True, policy="fixed:4")
        for _, chunk in zip(range(3), stream):
            assert chunk.token_ids
        stream.close()  # cancels the call
    wait_for_baseline(stack, baseline)


def test_client_deadline_is_honoured_end_to_end(stack):
    baseline = live_replicas(stack)
    start = time.monotonic()
    with Client(stack.address) as client, pytest.raises(DeadlineExceeded):
        client.generate("class A:", max_tokens=2000, temperature=0, ignore_eos=True, timeout=0.5)
    assert time.monotonic() - start < 3.0
    wait_for_baseline(stack, baseline)


def leases_on(stack: Stack, kind: str) -> int:
    async def count():
        async with RedisLoadStore(stack.redis_url) as store:
            return sum([await store.reservations(r.replica_id) for r in await store.replicas(kind)])

    return asyncio.run(count())


def test_each_session_holds_its_own_lease_whatever_its_request_id(stack):
    """Two requests with the same (caller-chosen) request id: two leases; the first to end releases its own."""
    deadline = time.monotonic() + 35  # the earlier tests' requests are gone; a lease not released expires in 30 s
    while leases_on(stack, "verify") and time.monotonic() < deadline:
        time.sleep(0.05)
    with Client(stack.address) as client:
        first, second = (client.stream("def f():", max_tokens=2000, temperature=0, ignore_eos=True, policy="none",
                                       request_id="same") for _ in range(2))
        next(first), next(second)
        both = leases_on(stack, "verify")
        first.close()
        deadline = time.monotonic() + 5
        while leases_on(stack, "verify") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        one = leases_on(stack, "verify")
        second.close()
    assert (both, one) == (2, 1)


def test_while_redis_is_down_requests_are_served_on_the_last_view_and_leases_return_after(stack):
    """Redis stops answering (SIGSTOP): requests in flight finish, new ones are served on the coordinator's last
    view of the replicas, no error names an internal address; back, the leases are in Redis again."""
    # The held stream is not read meanwhile: a small flow-control window pauses it at the coordinator, so it still
    # holds its lease when Redis is back, however fast this machine decodes its 2000 tokens (once, it had ended before
    # Redis came back, and no lease was there to renew).
    paused = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with Client(stack.address, timeout=60) as client, \
            Client(stack.address, timeout=60, channel_options=paused) as slow_reader:
        held = slow_reader.stream("def held():", max_tokens=2000, temperature=0, ignore_eos=True, policy="none")
        next(held)
        os.kill(stack.redis.pid, signal.SIGSTOP)
        try:
            outs = [client.generate(p, max_tokens=8, temperature=0, policy="fixed:2") for p in PROMPTS[:3]]
            state = client.cluster_state()
        finally:
            os.kill(stack.redis.pid, signal.SIGCONT)
        assert all(len(o.token_ids) == 8 for o in outs)
        assert sorted(r.kind for r in state) == ["draft", "verify", "verify"]
        deadline = time.monotonic() + 15
        while leases_on(stack, "verify") != 1:  # the held session's lease, renewed back into Redis
            assert time.monotonic() < deadline, "the held lease never came back to Redis"
            time.sleep(0.2)
        assert not next(held).finish_reason  # the lease back in Redis is the held session's
        held.close()


def test_a_verify_replica_killed_mid_stream_is_replaced_and_leaves_the_store(stack, bundled_engine):
    """The request resumes on the other replica with its committed tokens: greedy output and text are the
    same as if nothing had happened."""
    prompt = "import sys\n"
    expected = bundled_engine.generate([prompt], SamplingParams(max_tokens=300, temperature=0, ignore_eos=True))[0]
    with Client(stack.address, max_retries=0) as client:
        stream = client.stream(prompt, max_tokens=300, temperature=0, ignore_eos=True, policy="fixed:4")
        chunks = [next(stream)]
        victim = next(n for n in ("verify-0", "verify-1") if replica_load(stack, n).sessions == 1)
        stack.kill(victim)
        chunks += list(stream)
        stats = chunks[-1].stats
        assert [t for c in chunks for t in c.token_ids] == expected.token_ids
        assert "".join(c.text for c in chunks) == expected.text
        assert stats.verify_resumes == 1 and stats.verify_replica not in ("", victim)
        after = client.generate("def f(x):", max_tokens=8, temperature=0)
        assert after.finish_reason and after.stats.verify_replica != victim

        async def verify_replicas():
            async with RedisLoadStore(stack.redis_url) as store:
                return [r.replica_id for r in await store.replicas("verify")]

        deadline = time.monotonic() + TTL_S + 3
        while victim in asyncio.run(verify_replicas()):
            assert time.monotonic() < deadline, f"{victim} still in the load store after its TTL"
            time.sleep(0.2)
        assert victim not in [r.replica_id for r in client.cluster_state()]
