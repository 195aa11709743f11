"""`adaspec.Client`: the blocking SDK over a grpc sync channel."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from adaspec.client._base import DEFAULT_ADDRESS, ClientBase
from adaspec.client._messages import Chunk, Completion, Prompt, _Accumulator, build_request, trace_metadata
from adaspec.client._retry import Attempts
from adaspec.replica_load import ReplicaLoad
from adaspec.service_runtime.transport_security import channel
from adaspec.v1 import coordinator_pb2, coordinator_pb2_grpc


class Client(ClientBase):
    """Blocking client of the AdaSpec coordinator.

        with adaspec.Client("127.0.0.1:50051", timeout=30) as client:
            print(client.generate("def fib(n):", max_tokens=32).text)
            for chunk in client.stream("def fib(n):", max_tokens=32):
                print(chunk.text, end="")

    `timeout` is the default deadline of a whole call in seconds (retries and the entire stream included);
    None means no deadline. Calls that failed with UNAVAILABLE (or RESOURCE_EXHAUSTED with a RetryInfo)
    before any response arrived are retried up to `max_retries` times with exponential backoff and jitter.
    Failures raise `adaspec.errors.AdaSpecError` subclasses. Safe to share between threads.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, max_retries: int = 3,
                 channel_options: Sequence[tuple[str, Any]] | None = None, initial_backoff: float = 0.1,
                 max_backoff: float = 2.0, api_key: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        super().__init__(address, timeout=timeout, max_retries=max_retries, channel_options=channel_options,
                         initial_backoff=initial_backoff, max_backoff=max_backoff, api_key=api_key, tls_ca=tls_ca,
                         tls_cert=tls_cert, tls_key=tls_key)
        self._channel = channel(address, self._tls, self._channel_options, aio=False)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, prompt: Prompt, *, max_tokens: int | None = None, temperature: float | None = None,
                 top_k: int = 0, top_p: float | None = None, seed: int | None = None,
                 stop: str | Iterable[str] | None = None, stop_token_ids: Iterable[int] | None = None,
                 ignore_eos: bool = False, policy: str | None = None, ttft_ms: float | None = None,
                 tpot_ms: float | None = None, timeout: float | None = None,
                 request_id: str | None = None) -> Completion:
        """Run one request to the end. `prompt` is text or token ids; arguments left at None take the
        server's defaults; `policy` is "none" | "fixed:K"; `ttft_ms`/`tpot_ms` are the request's SLOs."""
        request = build_request(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=stop, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos,
                                policy=policy, ttft_ms=ttft_ms, tpot_ms=tpot_ms, request_id=request_id)
        result = _Accumulator()
        with contextlib.closing(self._stream(request, timeout)) as chunks:
            for chunk in chunks:
                result.add(chunk)
        return result.completion()

    def stream(self, prompt: Prompt, *, max_tokens: int | None = None, temperature: float | None = None,
               top_k: int = 0, top_p: float | None = None, seed: int | None = None,
               stop: str | Iterable[str] | None = None, stop_token_ids: Iterable[int] | None = None,
               ignore_eos: bool = False, policy: str | None = None, ttft_ms: float | None = None,
               tpot_ms: float | None = None, timeout: float | None = None,
               request_id: str | None = None) -> Iterator[Chunk]:
        """Like `generate`, but yields the tokens as they are committed; the last chunk carries
        `finish_reason` and `stats`. The call starts on the first `next()`. Leaving the loop early (break,
        exception) or `close()`-ing the iterator cancels the call, and the server aborts the request."""
        request = build_request(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=stop, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos,
                                policy=policy, ttft_ms=ttft_ms, tpot_ms=tpot_ms, request_id=request_id)
        return self._stream(request, timeout)

    def cluster_state(self, *, timeout: float | None = None) -> list[ReplicaLoad]:
        """The replicas the coordinator routes to, with their last published load."""
        attempts = self._attempts(timeout)
        while True:
            try:
                state = self._stub.GetClusterState(coordinator_pb2.GetClusterStateRequest(), metadata=self._metadata,
                                                   timeout=attempts.remaining())
                return [ReplicaLoad.from_proto(r) for r in state.replicas]
            except grpc.RpcError as e:
                delay = attempts.delay_or_raise(e)
            time.sleep(delay)

    def _stream(self, request: coordinator_pb2.GenerateRequest, timeout: float | None) -> Iterator[Chunk]:
        attempts: Attempts = self._attempts(timeout)
        while True:
            call = self._stub.Generate(request, timeout=attempts.remaining(),
                                       metadata=self._metadata + trace_metadata(request))
            received = False
            try:
                for response in call:
                    received = True
                    yield Chunk.from_proto(response)
                return
            except grpc.RpcError as e:
                delay = attempts.delay_or_raise(e, received)
            finally:
                call.cancel()  # no-op once the call ended; cancels it when the caller stopped iterating
            time.sleep(delay)
