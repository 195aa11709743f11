"""The SDK (adaspec.Client, adaspec.AsyncClient) and adaspec.errors against a real grpc.aio server.

The server is a scripted coordinator on a free loopback port, in a background thread with its own event loop.
The prompt names the script: "echo" (or token ids) streams tokens and final stats, "unavailable:N" fails N
times before succeeding, "exhausted" / "exhausted-retry" are RESOURCE_EXHAUSTED without / with a RetryInfo,
"bad" rejects the request's SamplingParams, "fail-after-first" sends one chunk and then fails, "sleep"
never answers, "endless" streams forever and records its cancellation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import grpc.aio
import pytest

from adaspec import AsyncClient, Client, SamplingParams
from adaspec.client import Chunk, ReplicaLoad, build_request
from adaspec.errors import (
    AdaSpecError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    abort,
    error_for,
    from_rpc_error,
    invalid_argument_from,
    rich_status,
)
from adaspec.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


class ScriptedCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self) -> None:
        self.requests: list[coordinator_pb2.GenerateRequest] = []
        self.attempts: collections.Counter[str] = collections.Counter()
        self.cancelled: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self.lock = threading.Lock()

    async def Generate(self, request, context):
        with self.lock:
            self.requests.append(request)
            key = request.request_id or request.prompt
            self.attempts[key] += 1
            attempt = self.attempts[key]
        script = request.prompt
        if script.startswith("unavailable:") and attempt <= int(script.split(":")[1]):
            await abort(context, grpc.StatusCode.UNAVAILABLE, "no verify pool")
        if script == "exhausted":
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if script == "exhausted-retry" and attempt == 1:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", retry_after_s=0.05)
        if script == "bad":
            try:
                SamplingParams(max_tokens=request.params.max_tokens)
            except ValueError as e:
                await context.abort_with_status(invalid_argument_from(e, "prompt"))
        if script == "sleep":
            await asyncio.sleep(30)
        if script == "endless":
            try:
                while True:
                    yield coordinator_pb2.GenerateResponse(token_ids=[7], text="x")
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancelled[request.request_id].set()
                raise
        if script == "fail-after-first":
            yield coordinator_pb2.GenerateResponse(token_ids=[1], text="a")
            await abort(context, grpc.StatusCode.UNAVAILABLE, "verify replica lost")
        # echo: the prompt's tokens (or its characters' codes), one message each, up to max_tokens (default 4)
        tokens = list(request.prompt_token_ids) or [ord(c) for c in request.prompt]
        limit = request.params.max_tokens if request.params.HasField("max_tokens") else 4
        tokens = (tokens * limit)[:limit]
        for token in tokens:
            yield coordinator_pb2.GenerateResponse(token_ids=[token], text=chr(token))
        stats = coordinator_pb2.RequestStats(
            request_id=request.request_id or "req-1", prompt_tokens=len(request.prompt_token_ids) or
            len(request.prompt), output_tokens=len(tokens), ttft_ms=12.5, tpot_ms=3.25 if len(tokens) > 1 else 0,
            steps=max(len(tokens) - 1, 0), draft_tokens=6, accepted_tokens=3, acceptance_rate=0.5, mean_k=2.0,
            policy=request.policy or "fixed:2", verify_replica="verify-0", draft_replica="draft-0", slo_met=True)
        yield coordinator_pb2.GenerateResponse(finish_reason="length", stats=stats)

    async def GetClusterState(self, request, context):
        return coordinator_pb2.ClusterState(load_store="memory", default_policy="fixed:2", replicas=[
            common_pb2.ReplicaLoad(replica_id="verify-0", kind="verify", pool="p0", address="127.0.0.1:1",
                                   sessions=2, free_kv_blocks=10, total_kv_blocks=16, step_latency_ms=4.5,
                                   acceptance_rate=0.7, updated_at=1.5),
            common_pb2.ReplicaLoad(replica_id="draft-0", kind="draft", address="127.0.0.1:2")])


@pytest.fixture(scope="module")
def server():
    servicer = ScriptedCoordinator()
    loop = asyncio.new_event_loop()
    started: dict = {}

    async def start():
        srv = grpc.aio.server()
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, srv)
        started["port"] = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        started["server"] = srv

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    servicer.address = f"127.0.0.1:{started['port']}"
    yield servicer
    asyncio.run_coroutine_threadsafe(started["server"].stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def client(server):
    with Client(server.address, initial_backoff=0.01, max_backoff=0.05) as c:
        yield c


def last_request(server) -> coordinator_pb2.GenerateRequest:
    return server.requests[-1]


# ------------------------------------------------------------------------------------------------ errors


class FakeRpcError(grpc.RpcError):
    """What a failed call raises, for a given grpc.Status."""

    def __init__(self, status: grpc.Status) -> None:
        self.status = status

    def code(self):
        return self.status.code

    def details(self):
        return self.status.details

    def trailing_metadata(self):
        return self.status.trailing_metadata


def test_rich_status_round_trip_and_str():
    status = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", field="prompt", description="too long",
                         retry_after_s=1.5)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.details == "queue full"
    error = from_rpc_error(FakeRpcError(status))
    assert type(error) is ResourceExhausted and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "queue full" and error.field_violations == [("prompt", "too long")]
    assert error.retry_delay == pytest.approx(1.5)
    assert str(error) == "RESOURCE_EXHAUSTED: queue full [prompt: too long] (retry after 1.5 s)"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ResourceExhausted and again.field_violations == error.field_violations

    # no rich status: code and details only; codes without a subclass give AdaSpecError itself
    plain = from_rpc_error(FakeRpcError(SimpleNamespace(code=grpc.StatusCode.PERMISSION_DENIED, details="nope",
                                                        trailing_metadata=())))
    assert type(plain) is AdaSpecError and plain.details == [] and str(plain) == "PERMISSION_DENIED: nope"
    assert type(error_for(grpc.StatusCode.UNAVAILABLE, "x")) is Unavailable


@pytest.mark.parametrize("message, field, description", [
    ("SamplingParams.top_p must be a number in (0, 1], got 2", "params.top_p", "must be a number in (0, 1], got 2"),
    ("stop_token_ids must be a list of token ids >= 0", "params.stop_token_ids", "must be a list of token ids >= 0"),
    ("prompt is empty", "prompt", "prompt is empty"),
])
def test_invalid_argument_from(message, field, description):
    error = from_rpc_error(FakeRpcError(invalid_argument_from(ValueError(message), "prompt")))
    assert isinstance(error, InvalidArgument) and error.message == message
    assert error.field_violations == [(field, description)]


# ------------------------------------------------------------------------------------------------ sync client


def test_generate_and_stats(server, client):
    completion = client.generate("hi!", max_tokens=5, policy="fixed:3", request_id="gen-1")
    assert completion.text == "hi!hi" and completion.token_ids == [104, 105, 33, 104, 105]
    assert completion.finish_reason == "length" and completion.request_id == "gen-1"
    stats = completion.stats
    assert (stats.ttft_ms, stats.tpot_ms, stats.steps) == (12.5, 3.25, 4)
    assert (stats.output_tokens, stats.prompt_tokens) == (5, 3)
    assert (stats.draft_tokens, stats.accepted_tokens, stats.acceptance_rate, stats.mean_k) == (6, 3, 0.5, 2.0)
    assert (stats.policy, stats.verify_replica, stats.draft_replica, stats.slo_met) == ("fixed:3", "verify-0",
                                                                                      "draft-0", True)
    one = client.generate([65, 66], max_tokens=1)
    assert one.text == "A" and one.stats.tpot_ms is None  # fewer than two tokens: no TPOT
    assert list(last_request(server).prompt_token_ids) == [65, 66] and last_request(server).prompt == ""


def test_stream_chunks(client):
    chunks = list(client.stream("ab", max_tokens=3))
    assert [c.token_ids for c in chunks[:-1]] == [[97], [98], [97]] and "".join(c.text for c in chunks) == "aba"
    assert all(c.finish_reason is None and c.stats is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "length" and chunks[-1].stats.output_tokens == 3
    assert isinstance(chunks[0], Chunk)


def test_unset_fields_stay_unset(server, client):
    client.generate("echo")
    request = last_request(server)
    assert not request.HasField("params") and not request.HasField("slo")
    assert request.policy == "" and request.request_id == "" and request.prompt == "echo"

    client.generate("echo", max_tokens=2, temperature=0.0, seed=0, stop="\n", ttft_ms=200, top_k=5)
    request = last_request(server)
    params = request.params
    assert params.HasField("max_tokens") and params.HasField("temperature") and params.HasField("seed")
    assert (params.max_tokens, params.temperature, params.seed, params.top_k) == (2, 0.0, 0, 5)
    assert not params.HasField("top_p") and list(params.stop) == ["\n"] and not params.ignore_eos
    assert request.slo.HasField("ttft_ms") and not request.slo.HasField("tpot_ms")


def test_bad_argument_types_raise_invalid_argument_locally(server, client):
    before = len(server.requests)
    with pytest.raises(InvalidArgument) as info:
        client.generate("x", seed=-1)
    assert info.value.field_violations[0][0] == "params.seed"
    with pytest.raises(InvalidArgument) as info:
        client.stream(b"bytes")
    assert info.value.field_violations[0][0] == "prompt"
    assert len(server.requests) == before
    with pytest.raises(InvalidArgument):
        build_request([1, True])


def test_invalid_argument_with_field_violations(server, client):
    with pytest.raises(InvalidArgument) as info:
        client.generate("bad", max_tokens=0, request_id="bad-1")
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and server.attempts["bad-1"] == 1  # never retried
    assert error.field_violations == [("params.max_tokens", "must be an integer >= 1, got 0")]
    assert "INVALID_ARGUMENT" in str(error) and "params.max_tokens" in str(error)
    assert isinstance(error.__cause__, grpc.RpcError)


def test_retries_unavailable_before_first_message(server, client):
    assert client.generate("unavailable:2", max_tokens=2, request_id="retry-1").text == "un"
    assert server.attempts["retry-1"] == 3
    assert [c.text for c in client.stream("unavailable:1", max_tokens=1, request_id="retry-2")][0] == "u"
    assert server.attempts["retry-2"] == 2


def test_retries_are_bounded(server):
    with Client(server.address, max_retries=1, initial_backoff=0.01) as c, pytest.raises(Unavailable) as info:
        c.generate("unavailable:5", request_id="retry-3")
    assert server.attempts["retry-3"] == 2 and info.value.message == "no verify pool"


def test_resource_exhausted_retried_only_with_retry_info(server, client):
    with pytest.raises(ResourceExhausted) as info:
        client.generate("exhausted", request_id="ex-1")
    assert server.attempts["ex-1"] == 1 and info.value.retry_delay is None
    start = time.monotonic()
    assert client.generate("exhausted-retry", max_tokens=1, request_id="ex-2").text == "e"
    assert server.attempts["ex-2"] == 2 and time.monotonic() - start >= 0.05  # waited the server's RetryInfo


def test_no_retry_after_first_chunk(server, client):
    stream = client.stream("fail-after-first", request_id="late-1")
    assert next(stream).text == "a"
    with pytest.raises(Unavailable) as info:
        next(stream)
    assert info.value.message == "verify replica lost" and server.attempts["late-1"] == 1
    with pytest.raises(Unavailable):
        client.generate("fail-after-first", request_id="late-2")
    assert server.attempts["late-2"] == 1


def test_deadline(server, client):
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        client.generate("sleep", timeout=0.3)
    assert 0.25 < time.monotonic() - start < 1.5 and info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # the deadline covers the whole stream, not each message
    start, received = time.monotonic(), 0
    with pytest.raises(DeadlineExceeded):
        for _ in client.stream("endless", timeout=0.3, request_id="dl-stream"):
            received += 1
    assert received > 0 and time.monotonic() - start < 1.5


def test_deadline_bounds_retries(server):
    with Client(server.address, timeout=0.4, max_retries=100, initial_backoff=0.05, max_backoff=0.1) as c:
        start = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            c.generate("unavailable:1000", request_id="dl-retry")
        assert time.monotonic() - start < 0.8 and 1 < server.attempts["dl-retry"] < 100


def test_breaking_out_of_stream_cancels_the_call(server, client):
    for chunk in client.stream("endless", request_id="cancel-1"):
        break
    assert server.cancelled["cancel-1"].wait(5)
    stream = client.stream("endless", request_id="cancel-2")
    next(stream)
    stream.close()
    assert server.cancelled["cancel-2"].wait(5)


def test_cluster_state(client):
    replicas = client.cluster_state()
    assert [r.replica_id for r in replicas] == ["verify-0", "draft-0"] and isinstance(replicas[0], ReplicaLoad)
    assert (replicas[0].sessions, replicas[0].free_kv_blocks, replicas[0].step_latency_ms) == (2, 10, 4.5)


def test_server_down_is_unavailable():
    with Client("127.0.0.1:1", max_retries=1, initial_backoff=0.01) as c, pytest.raises(Unavailable):
        c.generate("x", timeout=5)


# ------------------------------------------------------------------------------------------------ async client


def test_async_generate_stream_and_cluster_state(server):
    async def main():
        async with AsyncClient(server.address) as c:
            completion = await c.generate("hey", max_tokens=4, request_id="agen-1")
            chunks = [chunk async for chunk in c.stream([72, 73], max_tokens=2)]
            replicas = await c.cluster_state()
            return completion, chunks, replicas

    completion, chunks, replicas = asyncio.run(main())
    assert completion.text == "heyh" and completion.stats.output_tokens == 4 and completion.request_id == "agen-1"
    assert "".join(c.text for c in chunks) == "HI" and chunks[-1].finish_reason == "length"
    assert len(replicas) == 2


def test_async_errors_and_retries(server):
    async def main():
        async with AsyncClient(server.address, initial_backoff=0.01) as c:
            with pytest.raises(InvalidArgument) as info:
                await c.generate("bad", max_tokens=0)
            assert info.value.field_violations == [("params.max_tokens", "must be an integer >= 1, got 0")]
            assert (await c.generate("unavailable:2", max_tokens=1, request_id="aretry-1")).text == "u"
            stream = c.stream("fail-after-first", request_id="alate-1")
            assert (await stream.__anext__()).text == "a"
            with pytest.raises(Unavailable):
                await stream.__anext__()
            with pytest.raises(DeadlineExceeded):
                await c.generate("sleep", timeout=0.2)

    asyncio.run(main())
    assert server.attempts["aretry-1"] == 3 and server.attempts["alate-1"] == 1


def test_async_stream_cancellation(server):
    async def main():
        async with AsyncClient(server.address) as c:
            async with contextlib.aclosing(c.stream("endless", request_id="acancel-1")) as stream:
                async for _ in stream:
                    break
            assert await asyncio.to_thread(server.cancelled["acancel-1"].wait, 5)

            streaming = asyncio.Event()

            async def consume():
                async for _ in c.stream("endless", request_id="acancel-2"):
                    streaming.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(streaming.wait(), 10)  # running at the server: a cancel before would never reach it
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(server.cancelled["acancel-2"].wait, 5)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------ packaging


def test_sdk_import_does_not_import_torch():
    code = ("import sys, adaspec; from adaspec import Client, AsyncClient, AdaSpecError; import adaspec.errors; "
            "Client('127.0.0.1:1').close(); "
            "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
