"""The engine's side of the speculation core: its batch as plain data in, budgets out, outcomes back.

Each step, every decoding request's `RequestState` is brought up to date and the requests are grouped
by policy (one instance per policy string, so a batch-level rule sees its whole batch); each group's
policy gets the step's load (the whole batch, prompt chunks included) and the latency models. After
verification the calibration, each request's acceptance, the policies that learn and the latency
models hear what happened. The latency models start from a profile (given, or measured with the quick
grid the first time a policy needs one) and are refined from every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from adaspec.engine.sequence import Sequence
from adaspec.speculation.acceptance import AcceptanceCalibrator
from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.efficiency import expected_tokens, geometric_curve
from adaspec.speculation.latency_profile import LatencyModel, LatencyProfile, OnlineLatencyModel, Sample, step_features
from adaspec.speculation.policies import Policy, make_policy
from adaspec.speculation.prefill_budget import WaitingPrompt, prompt_token_budget
from adaspec.speculation.step_state import StepContext, StepLoad

OVERHEAD_WEIGHT = 0.1
SHAPE_WEIGHT = 0.1


@dataclass
class StepTimings:
    """What one engine step ran and how long it took (ms)."""

    total_ms: float
    draft_ms: float
    draft_forwards: list[tuple[int, int, float]]  # (rows, tokens, mean context) of each draft forward
    verify_ms: float
    verify_forward: tuple[int, int, float] | None  # the target forward's shape; None without one


class StepPlanner:
    def __init__(self, max_spec_len: int, profile: LatencyProfile | None,
                 measure_profile: Callable[[], LatencyProfile]):
        self.max_spec_len = max_spec_len
        self.calibrator = AcceptanceCalibrator()
        self.measure_profile = measure_profile
        self.verify_latency: OnlineLatencyModel | None = None
        self.draft_latency: OnlineLatencyModel | None = None
        self.overhead_ms = 0.0  # EWMA of step time outside the forwards
        # EWMAs of the verify forward's shape: sequences, query tokens per sequence, mean context (published load)
        self.mean_batch = self.mean_tokens = self.mean_context = 0.0
        self._policies: dict[str, Policy] = {}
        if profile is not None:
            self.use_profile(profile)

    def use_profile(self, profile: LatencyProfile) -> None:
        self.verify_latency = OnlineLatencyModel(profile.verify_samples, profile.verify)
        if profile.draft is not None:
            self.draft_latency = OnlineLatencyModel(profile.draft_samples, profile.draft)

    def policy(self, spec: str | Policy) -> Policy:
        """The engine's instance of a policy: one per policy string (a Policy object passes through)."""
        if isinstance(spec, Policy):
            return spec
        key = str(spec).strip()
        if key not in self._policies:
            self._policies[key] = make_policy(key, self.max_spec_len)
        return self._policies[key]

    def context(self, load: StepLoad, measure: bool) -> StepContext:
        if self.verify_latency is None and measure:
            self.use_profile(self.measure_profile())
        verify = self.verify_latency.model if self.verify_latency else LatencyModel()
        draft = self.draft_latency.model if self.draft_latency else None
        return StepContext(load, verify, draft, self.calibrator, self.max_spec_len)

    def budgets(self, seqs: list[Sequence], load: StepLoad) -> tuple[list[DraftBudget], StepContext]:
        now = time.perf_counter()
        for seq in seqs:
            _update(seq, now)
        ctx = self.context(load, measure=any(s.policy.needs_profile for s in seqs))
        budgets: list[DraftBudget | None] = [None] * len(seqs)
        for policy, indices in _groups(seqs).items():
            for i, budget in zip(indices, policy.budgets([seqs[i].request_state for i in indices], ctx)):
                budgets[i] = budget
        return budgets, ctx

    def prompt_budget(self, decoding: list[Sequence], rows: tuple[int, int, float], prompts: list[WaitingPrompt],
                      max_tokens: int, step_tokens: list[float] | None = None) -> int:
        """The prompt tokens the step may carry and keep `decoding`'s TPOT SLOs (`prefill_budget`); `rows`: the
        step's decoding rows without prompts (sequences, query tokens, mean context); `step_tokens`: the tokens
        each is expected to commit in the step (`expected_step_tokens`; 1 when not given). No latency model: no
        bound."""
        if self.verify_latency is None:
            return max_tokens
        now = time.perf_counter()
        for seq in decoding:
            _update(seq, now)
        batch, tokens, context = rows
        return prompt_token_budget(self.verify_latency.model, [s.request_state for s in decoding], batch=batch,
                                   query_tokens=tokens, context=context, overhead_ms=self.overhead_ms,
                                   prompts=prompts, max_tokens=max_tokens, step_tokens=step_tokens or ())

    def expected_step_tokens(self, seq: Sequence, drafts: int = 0, confidences: list[float] | None = None) -> float:
        """The tokens `seq` is expected to commit in a step verifying its drafts: from their `confidences` on its
        calibrated curve when they are known, else from its acceptance rate for `drafts` of them."""
        state, greedy = seq.request_state, seq.params.greedy
        if confidences:
            curve = state.acceptance.curve(self.calibrator.curve(greedy))
            return expected_tokens([curve(c) for c in confidences])
        return expected_tokens(geometric_curve(state.acceptance_rate(self.calibrator), drafts))

    def learn(self, seqs: list[Sequence], ctx: StepContext, confidences: list[list[float]], accepted: list[int],
              timings: StepTimings) -> None:
        for policy, indices in _groups(seqs).items():
            policy.observe([seqs[i].request_state for i in indices], ctx, [len(confidences[i]) for i in indices],
                           [accepted[i] for i in indices])
        for seq, tested, n in zip(seqs, confidences, accepted):
            if tested:
                greedy = seq.params.greedy
                seq.request_state.acceptance.observe(tested, n, self.calibrator.curve(greedy))
                self.calibrator.observe(tested, n, greedy)
        if timings.verify_forward is not None:
            self._average_shape(*timings.verify_forward)
            if self.verify_latency is not None:
                self.verify_latency.observe(Sample(step_features([timings.verify_forward]), timings.verify_ms))
        if self.draft_latency is not None and timings.draft_forwards:
            self.draft_latency.observe(Sample(step_features(timings.draft_forwards), timings.draft_ms))
        outside = max(0.0, timings.total_ms - timings.draft_ms - timings.verify_ms)
        self.overhead_ms += OVERHEAD_WEIGHT * (outside - self.overhead_ms)


    def _average_shape(self, batch: int, tokens: int, context: float) -> None:
        if not self.mean_batch:
            self.mean_batch, self.mean_tokens, self.mean_context = batch, tokens / batch, context
            return
        self.mean_batch += SHAPE_WEIGHT * (batch - self.mean_batch)
        self.mean_tokens += SHAPE_WEIGHT * (tokens / batch - self.mean_tokens)
        self.mean_context += SHAPE_WEIGHT * (context - self.mean_context)


def _update(seq: Sequence, now: float) -> None:
    state, stats = seq.request_state, seq.stats
    state.context_tokens = len(seq.token_ids)
    state.output_tokens = seq.num_output_tokens
    state.remaining_tokens = seq.params.max_tokens - seq.num_output_tokens
    state.since_arrival_s = now - stats.arrival_time
    state.since_first_token_s = None if stats.first_token_time is None else now - stats.first_token_time


def _groups(seqs: list[Sequence]) -> dict[Policy, list[int]]:
    groups: dict[Policy, list[int]] = {}
    for i, seq in enumerate(seqs):
        groups.setdefault(seq.policy, []).append(i)
    return groups
