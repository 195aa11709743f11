"""What a request asks for (`RequestSpec`), what it has done so far (`Counters`), and how it is reported at its end:
its stats in the last reply and its span's attributes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from adaspec.sampling_params import SamplingParams
from adaspec.speculation.policies import Policy
from adaspec.v1 import coordinator_pb2


@dataclass
class RequestSpec:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams  # seed resolved: draft and verify sessions share it
    policy: Policy  # the coordinator's instance for the request's policy string
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    deadline: float | None = None  # time.monotonic() by which the request must end

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens, estimated for text (~4 characters a token) until a replica tokenises it."""
        return len(self.prompt) // 4 + 1 if isinstance(self.prompt, str) else len(self.prompt)


@dataclass
class Counters:
    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    prompt_token_ids: list[int] = field(default_factory=list)  # as the verify pool tokenised the prompt
    output_ids: list[int] = field(default_factory=list)
    text_chars: int = 0  # output text streamed so far, in code points
    resumed: int = 0  # verify replicas replaced mid-request
    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        return len(self.output_ids)


def request_stats(spec: RequestSpec, c: Counters, verify_replica: str, draft_replica: str,
                  trace_id: str) -> coordinator_pb2.RequestStats:
    """The request's stats as they stand (its last reply carries them)."""
    ttft_ms = (c.first_token - c.start) * 1e3
    tpot_ms = (time.perf_counter() - c.first_token) * 1e3 / (c.output_tokens - 1) if c.output_tokens > 1 else 0.0
    slo_met = (spec.slo_ttft_ms is None or ttft_ms <= spec.slo_ttft_ms) and (
        spec.slo_tpot_ms is None or c.output_tokens < 2 or tpot_ms <= spec.slo_tpot_ms)
    return coordinator_pb2.RequestStats(
        request_id=spec.request_id, prompt_tokens=len(c.prompt_token_ids), output_tokens=c.output_tokens,
        ttft_ms=ttft_ms, tpot_ms=tpot_ms, steps=c.steps, draft_tokens=c.draft_tokens,
        accepted_tokens=c.accepted_tokens,
        acceptance_rate=c.accepted_tokens / c.draft_tokens if c.draft_tokens else 0.0,
        mean_k=c.draft_tokens / c.steps if c.steps else 0.0, policy=str(spec.policy),
        verify_replica=verify_replica, draft_replica=draft_replica, slo_met=slo_met,
        verify_resumes=c.resumed, trace_id=trace_id,
    )


def finished_attributes(stats: coordinator_pb2.RequestStats, finish_reason: str, model: str) -> dict:
    """A finished request's span attributes: the GenAI semantic conventions', then AdaSpec's (`model`: the verify
    replica's, "" when it is not known)."""
    return {
        "gen_ai.usage.input_tokens": stats.prompt_tokens, "gen_ai.usage.output_tokens": stats.output_tokens,
        "gen_ai.response.finish_reasons": [finish_reason],
        **({"gen_ai.response.model": model} if model else {}),
        "adaspec.ttft_ms": stats.ttft_ms, "adaspec.tpot_ms": stats.tpot_ms, "adaspec.slo_met": stats.slo_met,
        "adaspec.steps": stats.steps, "adaspec.draft_tokens": stats.draft_tokens,
        "adaspec.accepted_tokens": stats.accepted_tokens, "adaspec.verify_replica": stats.verify_replica,
        "adaspec.draft_replica": stats.draft_replica, "adaspec.verify_resumes": stats.verify_resumes,
    }
