"""The plain data a policy decides from: each request's state, and the step's load and models.

The engine, the coordinator and the simulator each build these from what they know (the engine from its
batch, the coordinator from one request and its replica's heartbeat, the simulator from its event queue)
and call the same policies with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adaspec.speculation.acceptance import AcceptanceCalibrator, RequestAcceptance
from adaspec.speculation.latency_profile import LatencyModel

MIN_TOKENS_FOR_PACE = 4  # a request's running TPOT says little before this many tokens
# m: the share of a TPOT SLO that plans and prompt chunks aim at, for what they do not see of a token's time (the hop
# to the coordinator and back, the wait for a batch to gather) and for the latency model's error on a step
SLO_MARGIN = 0.85


@dataclass
class RequestState:
    """One request at one step."""

    context_tokens: int  # prompt + output so far
    output_tokens: int
    remaining_tokens: int  # the most it may still generate
    greedy: bool
    since_arrival_s: float = 0.0
    since_first_token_s: float | None = None  # None before the first token
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    # context its draft session has not seen, beyond the one token every draft step feeds (a fresh session: the
    # prompt and what came since; after a stretch at k = 0: the tokens committed meanwhile)
    draft_lag_tokens: int = 0
    acceptance: RequestAcceptance = field(default_factory=RequestAcceptance)
    memo: dict = field(default_factory=dict)  # what a policy keeps about this request between steps

    @property
    def running_tpot_s(self) -> float | None:
        """Time per output token after the first, so far; None while there are too few tokens to tell."""
        if self.since_first_token_s is None or self.output_tokens < MIN_TOKENS_FOR_PACE:
            return None
        return self.since_first_token_s / (self.output_tokens - 1)

    def allowed_token_ms(self, margin: float = 1.0) -> float:
        """The mean time per token the rest of the request may take and still bring its TPOT within `margin` of its
        SLO (inf without one, or when the SLO itself can no longer be met whatever happens: a lost cause does not
        constrain the others; 0 for a request behind the margin's pace but not lost)."""
        if self.tpot_slo_s is None or self.since_first_token_s is None or self.remaining_tokens < 1:
            return math.inf
        final_tokens = self.output_tokens + self.remaining_tokens
        if self.tpot_slo_s * (final_tokens - 1) - self.since_first_token_s <= 0:
            return math.inf
        budget_s = margin * self.tpot_slo_s * (final_tokens - 1) - self.since_first_token_s
        return max(0.0, budget_s) * 1e3 / self.remaining_tokens

    def acceptance_rate(self, calibrator: AcceptanceCalibrator) -> float:
        """Its expected per-draft acceptance: its own outcomes on the calibrated mean as their prior."""
        return self.acceptance.rate(calibrator.mean_acceptance(self.greedy))

    def pace(self) -> float:
        """Running TPOT over its SLO: > 1 behind, < 1 ahead; 1 without an SLO or before it can be told."""
        running = self.running_tpot_s
        if self.tpot_slo_s is None or running is None:
            return 1.0
        return running / self.tpot_slo_s


@dataclass(frozen=True)
class StepLoad:
    """The step the planned requests share, besides themselves."""

    batch: int = 1  # sequences in the verify forward, the planned ones included
    other_tokens: int = 0  # query tokens of the other sequences (their drafts + 1, prompt chunks)
    other_yield: float = 0.0  # tokens the other sequences are expected to commit in the step
    context: float = 0.0  # mean context length in the forward
    draft_batch: int = 0  # other sequences drafting on the draft replica
    overhead_ms: float = 0.0  # step time outside the forwards (network, scheduling), measured
    draft_overhead_ms: float = 0.0  # paid once more by a step that drafts at all (a draft replica's round trip)
    # the same at its tail (e.g. its 90th percentile; below the mean: none known): the SLO checks see it, the goodput
    # the mean (a short request has too few tokens to make up for one long step)
    draft_overhead_tail_ms: float = 0.0
    step_cap_ms: float = math.inf  # the longest step other requests' SLOs allow (TTFT of prompts, TPOT of others)
    # Planned requests that draft nothing do not wait for those that draft: their steps go ahead in a verify forward
    # of their own (the services). In the engine every request of a step waits for its drafts: False.
    split_phases: bool = False


@dataclass
class StepContext:
    """Everything per step but the requests: the load, the latency models, the calibration."""

    load: StepLoad
    verify: LatencyModel
    draft: LatencyModel | None
    calibrator: AcceptanceCalibrator
    max_spec_len: int
