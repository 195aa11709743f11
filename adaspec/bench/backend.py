"""The service under test, behind one small interface: send a request, yield what each chunk of its stream
carries. The measuring (`adaspec.bench.measure`) only sees `Delta`s and `RequestFailed`, so another way to reach
a server (an OpenAI-compatible HTTP endpoint, say) is one more `Backend` here and one more name in `BACKENDS`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from adaspec.client import AsyncClient
from adaspec.errors import AdaSpecError


@dataclass(frozen=True)
class Delta:
    """One chunk of a response stream: how many tokens it carries and, on the last chunk where the server
    reports them, per-request statistics under the request record's keys (`output_tokens`, `draft_tokens`,
    `accepted_tokens`, `acceptance_rate`, `mean_k`, `server_slo_met`, `server_policy`)."""

    tokens: int
    stats: dict[str, Any] | None = None


class RequestFailed(Exception):
    """A request the service failed: `code` is the status name (`INVALID_ARGUMENT`, `UNAVAILABLE`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Backend(ABC):
    """A connection to the service under test, opened once and shared by every request of a bench."""

    name: str

    @abstractmethod
    def stream(self, prompt: str, *, max_tokens: int, temperature: float, ignore_eos: bool, policy: str,
               ttft_ms: float | None, tpot_ms: float | None) -> AsyncIterator[Delta]:
        """The request's chunks as they arrive; raises `RequestFailed` when the service fails the request."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AdaSpecBackend(Backend):
    """The coordinator's gRPC API through the Python SDK (`adaspec.AsyncClient`), one channel for all requests.
    The SDK retries a request turned away before its first token (up to `max_retries` times); its TTFT then
    includes the wait, as a user of the SDK sees it."""

    name = "adaspec"

    def __init__(self, address: str, *, timeout_s: float, max_retries: int) -> None:
        self.client = AsyncClient(address, timeout=timeout_s, max_retries=max_retries)

    async def stream(self, prompt: str, *, max_tokens: int, temperature: float, ignore_eos: bool, policy: str,
                     ttft_ms: float | None, tpot_ms: float | None) -> AsyncIterator[Delta]:
        try:
            chunks = self.client.stream(prompt, max_tokens=max_tokens, temperature=temperature, ignore_eos=ignore_eos,
                                        policy=policy, ttft_ms=ttft_ms, tpot_ms=tpot_ms)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    s = chunk.stats
                    yield Delta(len(chunk.token_ids), None if s is None else {
                        "output_tokens": s.output_tokens, "draft_tokens": s.draft_tokens,
                        "accepted_tokens": s.accepted_tokens, "acceptance_rate": s.acceptance_rate,
                        "mean_k": s.mean_k, "server_slo_met": s.slo_met, "server_policy": s.policy})
        except AdaSpecError as error:
            raise RequestFailed(error.code.name, error.message) from error

    async def close(self) -> None:
        await self.client.close()


BACKENDS = {"adaspec": AdaSpecBackend}


def open_backend(name: str, target: str, *, timeout_s: float, max_retries: int) -> Backend:
    """The backend `name` connected to `target` (for `adaspec`: the coordinator's HOST:PORT)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name](target, timeout_s=timeout_s, max_retries=max_retries)
