"""A request's state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from adaspec.engine.detokenizer import IncrementalDetokenizer
from adaspec.sampling_params import SamplingParams
from adaspec.speculation.step_state import RequestState


def check_token_ids(token_ids: list[int], vocab_size: int, what: str) -> None:
    """Raise ValueError, naming `what`, unless every token id is an int in [0, vocab_size)."""
    bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what} must be in [0, {vocab_size}); got {bad[:5]}")


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not admitted: no KV reservation yet
    PREFILLING = "prefilling"  # admitted, prompt partly in the target's cache
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass
class RequestStats:
    steps: int = 0  # verification steps after the prompt
    draft_tokens: int = 0
    accepted_tokens: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_k(self) -> float:
        return self.draft_tokens / self.steps if self.steps else 0.0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    def tpot_s(self, num_output_tokens: int) -> float | None:
        if self.finish_time is None or self.first_token_time is None or num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (num_output_tokens - 1)

    def as_dict(self, num_output_tokens: int) -> dict:
        return {
            "steps": self.steps,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "mean_k": self.mean_k,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s(num_output_tokens),
        }


class Sequence:
    def __init__(self, seq_id: int, prompt_ids: list[int], params: SamplingParams, seed: int, policy):
        self.seq_id = seq_id
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.seed = seed
        self.policy = policy
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_text_index: int | None = None  # where a matched stop string starts in the output text
        self.stop_scan_from = 0  # output text before this was already searched for stop strings
        self.output_text: IncrementalDetokenizer | None = None  # kept only when stop strings are watched
        self.stats = RequestStats()
        # what the speculation policies see of it (the engine keeps it up to date at each step)
        self.request_state = RequestState(len(prompt_ids), 0, params.max_tokens, params.greedy)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
