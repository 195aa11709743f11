"""What the SDK returns (plain dataclasses) and how it builds a GenerateRequest. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from adaspec.errors import InvalidArgument, bad_request
from adaspec.service_runtime.tracing import traceparent
from adaspec.v1 import coordinator_pb2

Prompt = str | Iterable[int]


@dataclass(frozen=True)
class RequestStats:
    """Per-request statistics from the final GenerateResponse (proto `RequestStats`)."""

    request_id: str
    prompt_tokens: int
    output_tokens: int
    ttft_ms: float
    tpot_ms: float | None  # None when fewer than two tokens were generated
    steps: int
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    mean_k: float
    policy: str
    verify_replica: str
    draft_replica: str  # empty when the request ran without a draft
    slo_met: bool
    verify_resumes: int = 0  # verify replicas that failed mid-request and were replaced
    trace_id: str = ""  # the request's OpenTelemetry trace id (32 hex digits); empty when the service traces nothing

    @classmethod
    def from_proto(cls, stats: coordinator_pb2.RequestStats) -> RequestStats:
        return cls(
            request_id=stats.request_id, prompt_tokens=stats.prompt_tokens, output_tokens=stats.output_tokens,
            ttft_ms=stats.ttft_ms, tpot_ms=stats.tpot_ms if stats.output_tokens >= 2 else None,
            steps=stats.steps, draft_tokens=stats.draft_tokens, accepted_tokens=stats.accepted_tokens,
            acceptance_rate=stats.acceptance_rate, mean_k=stats.mean_k, policy=stats.policy,
            verify_replica=stats.verify_replica, draft_replica=stats.draft_replica, slo_met=stats.slo_met,
            verify_resumes=stats.verify_resumes, trace_id=stats.trace_id,
        )


@dataclass
class Chunk:
    """Tokens committed since the previous chunk. The last chunk of a stream has `finish_reason` and `stats`."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    stats: RequestStats | None = None

    @classmethod
    def from_proto(cls, response: coordinator_pb2.GenerateResponse) -> Chunk:
        return cls(text=response.text, token_ids=list(response.token_ids),
                   finish_reason=response.finish_reason or None,
                   stats=RequestStats.from_proto(response.stats) if response.HasField("stats") else None)


@dataclass
class Completion:
    """A finished request: the whole text and tokens, why it stopped, and its statistics."""

    text: str
    token_ids: list[int]
    finish_reason: str
    stats: RequestStats | None

    @property
    def request_id(self) -> str | None:
        return self.stats.request_id if self.stats is not None else None


class _Accumulator:
    """Joins the chunks of one stream into a Completion."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.finish_reason = ""
        self.stats: RequestStats | None = None

    def add(self, chunk: Chunk) -> None:
        self.text.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.stats = chunk.stats or self.stats

    def completion(self) -> Completion:
        return Completion("".join(self.text), self.token_ids, self.finish_reason, self.stats)


def _invalid(field_name: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"{field_name} {description}", details=[bad_request([(field_name, description)])])


@dataclass
class _Setter:
    """Sets proto fields, turning protobuf's TypeError/ValueError into InvalidArgument naming the field."""

    request: coordinator_pb2.GenerateRequest = field(default_factory=coordinator_pb2.GenerateRequest)

    def set(self, path: str, value: Any, *, repeated: bool = False) -> None:
        *parents, name = path.split(".")
        message = self.request
        for parent in parents:
            message = getattr(message, parent)
        try:
            if repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        except (TypeError, ValueError) as e:
            raise _invalid(path, f"is invalid: {e}") from None


def trace_metadata(request: coordinator_pb2.GenerateRequest) -> tuple[tuple[str, str], ...]:
    """The request's trace context as call metadata too, where gRPC instrumentation looks for it."""
    return (("traceparent", request.traceparent),) if request.traceparent else ()


def build_request(prompt: Prompt, *, max_tokens: int | None = None, temperature: float | None = None,
                  top_k: int = 0, top_p: float | None = None, seed: int | None = None,
                  stop: str | Iterable[str] | None = None, stop_token_ids: Iterable[int] | None = None,
                  ignore_eos: bool = False, policy: str | None = None, ttft_ms: float | None = None,
                  tpot_ms: float | None = None, request_id: str | None = None) -> coordinator_pb2.GenerateRequest:
    """The GenerateRequest for these arguments. Arguments left at None stay unset, so the server's defaults
    apply. Values protobuf cannot hold raise InvalidArgument locally; the server checks the rest."""
    s = _Setter()
    if isinstance(prompt, str):
        s.set("prompt", prompt)
    elif isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, Iterable):
        raise _invalid("prompt", f"must be a str or a list of token ids, got {type(prompt).__name__}")
    else:
        s.set("prompt_token_ids", prompt, repeated=True)
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p),
                        ("seed", seed)):
        if value is not None:
            s.set(f"params.{name}", value)
    if top_k:
        s.set("params.top_k", top_k)
    if ignore_eos:
        s.set("params.ignore_eos", ignore_eos)
    if stop is not None:
        s.set("params.stop", [stop] if isinstance(stop, str) else stop, repeated=True)
    if stop_token_ids is not None:
        s.set("params.stop_token_ids", stop_token_ids, repeated=True)
    if policy:
        s.set("policy", policy)
    parent = traceparent(trace.get_current_span())
    if parent:  # the caller's trace (an OpenTelemetry span current here) goes on in the service
        s.set("traceparent", parent)
    if ttft_ms is not None:
        s.set("slo.ttft_ms", ttft_ms)
    if tpot_ms is not None:
        s.set("slo.tpot_ms", tpot_ms)
    if request_id:
        s.set("request_id", request_id)
    return s.request
