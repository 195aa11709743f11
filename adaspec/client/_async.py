"""`adaspec.AsyncClient`: the asyncio SDK over a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from adaspec.client._base import DEFAULT_ADDRESS, ClientBase
from adaspec.client._messages import Chunk, Completion, Prompt, _Accumulator, build_request, trace_metadata
from adaspec.replica_load import ReplicaLoad
from adaspec.service_runtime.transport_security import channel
from adaspec.v1 import coordinator_pb2, coordinator_pb2_grpc


class AsyncClient(ClientBase):
    """asyncio client of the AdaSpec coordinator; same arguments and semantics as `adaspec.Client`.

        async with adaspec.AsyncClient("127.0.0.1:50051", timeout=30) as client:
            completion = await client.generate("def fib(n):", max_tokens=32)
            async for chunk in client.stream("def fib(n):", max_tokens=32):
                print(chunk.text, end="")

    The channel is opened on first use, inside the running event loop, and belongs to that loop. Cancelling
    the task that awaits a call, or leaving an `async for` over `stream()` early, cancels the RPC (after a
    `break`, the abandoned generator is closed when it is collected; `contextlib.aclosing` makes it
    immediate).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, max_retries: int = 3,
                 channel_options: Sequence[tuple[str, Any]] | None = None, initial_backoff: float = 0.1,
                 max_backoff: float = 2.0, api_key: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        super().__init__(address, timeout=timeout, max_retries=max_retries, channel_options=channel_options,
                         initial_backoff=initial_backoff, max_backoff=max_backoff, api_key=api_key, tls_ca=tls_ca,
                         tls_cert=tls_cert, tls_key=tls_key)
        self._channel: grpc.aio.Channel | None = None
        self._stub: coordinator_pb2_grpc.CoordinatorStub | None = None
        self._closed = False

    def _get_stub(self) -> coordinator_pb2_grpc.CoordinatorStub:
        if self._closed:
            raise RuntimeError("AsyncClient is closed")
        if self._stub is None:
            self._channel = channel(self.address, self._tls, self._channel_options)
            self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        return self._stub

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def generate(self, prompt: Prompt, *, max_tokens: int | None = None, temperature: float | None = None,
                       top_k: int = 0, top_p: float | None = None, seed: int | None = None,
                       stop: str | Iterable[str] | None = None, stop_token_ids: Iterable[int] | None = None,
                       ignore_eos: bool = False, policy: str | None = None, ttft_ms: float | None = None,
                       tpot_ms: float | None = None, timeout: float | None = None,
                       request_id: str | None = None) -> Completion:
        """Run one request to the end (see `adaspec.Client.generate`)."""
        request = build_request(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=stop, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos,
                                policy=policy, ttft_ms=ttft_ms, tpot_ms=tpot_ms, request_id=request_id)
        result = _Accumulator()
        chunks = self._stream(request, timeout)
        try:
            async for chunk in chunks:
                result.add(chunk)
        finally:
            await chunks.aclose()
        return result.completion()

    def stream(self, prompt: Prompt, *, max_tokens: int | None = None, temperature: float | None = None,
               top_k: int = 0, top_p: float | None = None, seed: int | None = None,
               stop: str | Iterable[str] | None = None, stop_token_ids: Iterable[int] | None = None,
               ignore_eos: bool = False, policy: str | None = None, ttft_ms: float | None = None,
               tpot_ms: float | None = None, timeout: float | None = None,
               request_id: str | None = None) -> AsyncIterator[Chunk]:
        """An async generator of the request's chunks (see `adaspec.Client.stream`); use it with `async for`.
        Arguments are checked at once; the call starts on the first `__anext__()`. `aclose()` or cancelling
        the consuming task cancels the call."""
        request = build_request(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=stop, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos,
                                policy=policy, ttft_ms=ttft_ms, tpot_ms=tpot_ms, request_id=request_id)
        return self._stream(request, timeout)

    async def cluster_state(self, *, timeout: float | None = None) -> list[ReplicaLoad]:
        """The replicas the coordinator routes to, with their last published load."""
        attempts = self._attempts(timeout)
        while True:
            try:
                state = await self._get_stub().GetClusterState(coordinator_pb2.GetClusterStateRequest(),
                                                               metadata=self._metadata,
                                                               timeout=attempts.remaining())
                return [ReplicaLoad.from_proto(r) for r in state.replicas]
            except grpc.RpcError as e:
                delay = attempts.delay_or_raise(e)
            await asyncio.sleep(delay)

    async def _stream(self, request: coordinator_pb2.GenerateRequest,
                      timeout: float | None) -> AsyncIterator[Chunk]:
        attempts = self._attempts(timeout)
        while True:
            call = self._get_stub().Generate(request, timeout=attempts.remaining(),
                                            metadata=self._metadata + trace_metadata(request))
            received = False
            try:
                async for response in call:
                    received = True
                    yield Chunk.from_proto(response)
                return
            except grpc.RpcError as e:
                delay = attempts.delay_or_raise(e, received)
            finally:
                call.cancel()  # no-op once the call ended; cancels it on aclose() or task cancellation
            await asyncio.sleep(delay)
