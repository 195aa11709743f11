"""Routing: which verify replica can meet a request's SLOs with the most slack.

For each live replica, from its heartbeat (load, latency profile) the request's first token and its time
per output token there are predicted:

    TTFT ≈ overhead + t_v(1, prompt + prompt tokens queued ahead, prompt) + one step of the current batch
    TPOT ≈ T / E, with k, T and E from the plan of this request in that replica's step (`efficiency.plan`)

A replica meets the request when both predictions are within its SLOs; its slack is the smaller of the
two relative margins (1 − predicted / SLO). Replicas that meet the request rank first, by slack; slacks
within `TIE` of each other count as equal and are ordered by load (sessions per capacity). Where none
meets it, the fastest predicted TPOT wins (best effort). Replicas may differ in speed: their profiles say
so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.speculation.acceptance import AcceptanceCalibrator
from adaspec.speculation.efficiency import expected_tokens, geometric_curve, plan
from adaspec.speculation.latency_profile import LatencyModel
from adaspec.speculation.step_state import StepContext, StepLoad

TIE = 0.05


@dataclass(frozen=True)
class ReplicaView:
    """A verify replica as its heartbeat describes it."""

    replica_id: str
    sessions: int  # open sessions, and leases taken for new ones
    max_sessions: int
    queued_tokens: int  # prompt tokens waiting to be prefilled
    step_tokens: float  # mean query tokens per session and step (its drafts + 1)
    step_yield: float  # mean tokens committed per session and step
    context: float  # mean context of its sessions
    verify: LatencyModel
    overhead_ms: float = 0.0

    @property
    def load(self) -> float:
        return self.sessions / max(self.max_sessions, 1)


@dataclass(frozen=True)
class RoutePrediction:
    replica_id: str
    ttft_ms: float
    tpot_ms: float
    slack: float  # the smaller relative SLO margin (inf without SLOs); < 0: misses
    load: float


def predict(view: ReplicaView, prompt_tokens: int, greedy: bool, draft: LatencyModel | None,
            calibrator: AcceptanceCalibrator, max_spec_len: int, ttft_slo_ms: float | None = None,
            tpot_slo_ms: float | None = None) -> RoutePrediction:
    others = view.sessions
    context = (view.context * others + prompt_tokens) / (others + 1)
    load = StepLoad(batch=others + 1, other_tokens=round(view.step_tokens * others),
                    other_yield=view.step_yield * others, context=context, overhead_ms=view.overhead_ms)
    ctx = StepContext(load, view.verify, draft, calibrator, max_spec_len)
    rate = calibrator.mean_acceptance(greedy)
    step = plan(ctx, [geometric_curve(rate, max_spec_len)], [1.0], [math.inf], [max_spec_len])
    tpot = step.step_ms / expected_tokens([rate] * step.ks[0])
    current_step = view.overhead_ms + view.verify.predict(max(others, 1), round(view.step_tokens * others), context)
    prefill = view.verify.predict(1, prompt_tokens + view.queued_tokens, prompt_tokens)
    ttft = view.overhead_ms + prefill + (current_step if others else 0.0)
    margins = [1 - tpot / tpot_slo_ms] if tpot_slo_ms else []
    margins += [1 - ttft / ttft_slo_ms] if ttft_slo_ms else []
    return RoutePrediction(view.replica_id, ttft, tpot, min(margins, default=math.inf), view.load)


def rank(predictions: Sequence[RoutePrediction]) -> list[RoutePrediction]:
    """Best first (module docstring)."""
    meeting = [p for p in predictions if p.slack >= 0]
    if not meeting:
        return sorted(predictions, key=lambda p: (p.tpot_ms, p.load, p.replica_id))
    best = max(p.slack for p in meeting)
    if math.isinf(best):  # no SLO: the fastest, ties by load
        fastest = min(p.tpot_ms for p in meeting)
        key = lambda p: (p.tpot_ms > fastest * (1 + TIE), p.load, p.tpot_ms, p.replica_id)
    else:
        key = lambda p: (p.slack < best - TIE, p.load, -p.slack, p.replica_id)
    return sorted(meeting, key=key) + sorted([p for p in predictions if p.slack < 0], key=lambda p: -p.slack)
