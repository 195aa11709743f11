"""The service under test, behind one small interface: send a request, yield what each chunk of its stream
carries: the coordinator's gRPC API (`adaspec`) or any OpenAI-compatible HTTP server (`openai`), so the same
benchmark runs against AdaSpec and another server side by side. The measuring (`adaspec.bench.measure`) only
sees `Delta`s and `RequestFailed`.
"""

from __future__ import annotations

import contextlib
import os
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


class OpenAIBackend(Backend):
    """Any OpenAI-compatible server's `/v1/completions` (AdaSpec's HTTP API, vLLM, SGLang, TensorRT-LLM), through
    the `openai` package, streamed with usage. Its chunks carry text, not token counts: each chunk with text
    counts as one token for the timings (as `vllm bench serve` counts them) and the final usage gives the
    output tokens. AdaSpec's own fields (`policy`, `ttft_ms`, `tpot_ms`, `ignore_eos`) go as extra body
    fields, which other servers ignore (vLLM takes `ignore_eos` too); AdaSpec's statistics are read back from
    the response's `adaspec` extra where the server sends it. The key: `$OPENAI_API_KEY`, else
    `$ADASPEC_API_KEY`."""

    name = "openai"

    def __init__(self, base_url: str, *, timeout_s: float, max_retries: int, model: str | None = None) -> None:
        import openai

        key = os.environ.get("OPENAI_API_KEY") or os.environ.get("ADASPEC_API_KEY") or "unused"
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)
        self.model = model
        self.errors = openai.APIError

    async def stream(self, prompt: str, *, max_tokens: int, temperature: float, ignore_eos: bool, policy: str,
                     ttft_ms: float | None, tpot_ms: float | None) -> AsyncIterator[Delta]:
        extra = {"ignore_eos": ignore_eos, "policy": policy}
        extra.update({k: v for k, v in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)) if v is not None})
        try:
            if self.model is None:
                self.model = (await self.client.models.list()).data[0].id
            chunks = await self.client.completions.create(
                model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=temperature, stream=True,
                stream_options={"include_usage": True}, extra_body=extra)
            async for chunk in chunks:
                text = "".join(choice.text for choice in chunk.choices)
                stats = _openai_stats(chunk)
                if text or stats:
                    yield Delta(int(bool(text)), stats)
        except self.errors as error:
            raise RequestFailed(_openai_code(error), str(getattr(error, "message", error))) from error

    async def close(self) -> None:
        await self.client.close()


def _openai_stats(chunk) -> dict[str, Any] | None:
    """The request record's keys from a chunk's usage and AdaSpec statistics, where it has them."""
    stats: dict[str, Any] = {}
    extra = (chunk.model_extra or {}).get("adaspec")
    if extra:
        stats.update(draft_tokens=extra["draft_tokens"], accepted_tokens=extra["accepted_tokens"],
                     acceptance_rate=extra["acceptance_rate"], mean_k=extra["mean_k"],
                     server_slo_met=extra["slo_met"], server_policy=extra["policy"])
    if chunk.usage is not None:
        stats["output_tokens"] = chunk.usage.completion_tokens
    return stats or None


def _openai_code(error: Exception) -> str:
    """The gRPC-style status name for an HTTP error, as the records of the other backend say it."""
    status = getattr(error, "status_code", None)
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(status, "UNKNOWN" if status
                                                                                          else "UNAVAILABLE")


BACKENDS = {"adaspec": AdaSpecBackend, "openai": OpenAIBackend}


def open_backend(name: str, target: str, *, timeout_s: float, max_retries: int, model: str | None = None) -> Backend:
    """The backend `name` connected to `target`: for `adaspec` the coordinator's HOST:PORT, for `openai` the
    server's base URL (`http://host:port/v1`)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "openai":
        return OpenAIBackend(target, timeout_s=timeout_s, max_retries=max_retries, model=model)
    return AdaSpecBackend(target, timeout_s=timeout_s, max_retries=max_retries)
