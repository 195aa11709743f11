"""The coordinator's side of the speculation core: each request's state, its per-step budget, what it learns.

Per step of a request (`RequestSpeculation.budget`), its `RequestState` is brought up to date and its
policy (one instance per policy string in the coordinator, so rules that learn keep what they learned)
gets the step as the pure core sees it:
  - the load from the verify replica's heartbeat: sessions per engine step, their query tokens and yield,
    their context, its latency model; the draft replica's batch and latency model;
  - the acceptance prior: every verify replica's calibration counts, merged (`LoadView`);
  - the time outside the forwards on that replica (network, gathering: the observed step time of steps
    without drafts minus the model's prediction), and what a step that drafts costs besides its draft
    forwards (the draft replica's round trip, the same way from steps with drafts), each averaged over this
    coordinator's requests there;
  - the SLO cap: the longest step this coordinator's other requests on that replica can take and still
    meet their TPOT SLOs.
After each verification the request's acceptance and its policy hear the outcome.

Tokens committed while a request drafts nothing are kept (`CatchUp`) and sent with its next draft step,
so a step at k = 0 never waits for the draft replica.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.efficiency import expected_tokens, geometric_curve, step_time_ms
from adaspec.speculation.latency_profile import LatencyModel
from adaspec.speculation.policies import Policy, make_policy
from adaspec.speculation.step_state import RequestState, StepContext, StepLoad
from services.coordinator.load_view import LoadView, latency_model

OVERHEAD_WEIGHT = 0.05


class Steps:
    """Coordinator-wide: the policy instances, the requests on each verify replica, each replica's overhead."""

    def __init__(self, view: LoadView, max_spec_len: int):
        self.view, self.max_spec_len = view, max_spec_len
        self.policies: dict[str, Policy] = {}
        self.on_replica: dict[str, set[RequestSpeculation]] = defaultdict(set)
        self.overhead_ms: dict[str, float] = {}  # per verify replica: a step's time outside its forwards
        self.draft_overhead_ms: dict[str, float] = {}  # per verify replica: what drafting adds besides the forwards

    def policy(self, spec: str) -> Policy:
        """This coordinator's instance of a policy (raises ValueError for a bad string)."""
        key = spec.strip()
        if key not in self.policies:
            self.policies[key] = make_policy(key, self.max_spec_len)
        return self.policies[key]

    def step_cap_ms(self, replica_id: str, asking: RequestSpeculation) -> float:
        """The longest step the other requests on the replica allow: each may take its allowed time per token
        times the tokens it expects per step."""
        caps = [r.state.allowed_token_ms() * r.expected for r in self.on_replica.get(replica_id, ()) if r is not asking]
        return min((c for c in caps if math.isfinite(c)), default=math.inf)

    @staticmethod
    def observe(averages: dict[str, float], replica_id: str, sample_ms: float) -> None:
        old = averages.get(replica_id)
        averages[replica_id] = sample_ms if old is None else old + OVERHEAD_WEIGHT * (sample_ms - old)


@dataclass
class CatchUp:
    """What the draft session has not been told since its last step."""

    num_accepted: int | None = 0  # of its last drafts (None: not verified yet)
    token_ids: list[int] = field(default_factory=list)


class RequestSpeculation:
    def __init__(self, steps: Steps, policy: Policy, state: RequestState, max_tokens: int):
        self.steps, self.policy, self.state, self.max_tokens = steps, policy, state, max_tokens
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self.catch_up = CatchUp()
        self.verify_id: str | None = None
        self.draft_id: str | None = None
        self.in_step: list[float] = []  # confidences of the drafts being verified now
        self.expected = 1.0  # the tokens the request expects per step at its current k
        self.curve_sent: tuple[float, ...] | None = None
        self.asked_at: float | None = None  # when the current step's budget was given
        self.step_context: StepContext | None = None  # the step as the budget saw it

    def on_verify(self, replica_id: str | None) -> None:
        """The request now runs on this verify replica (None: on none)."""
        if self.verify_id is not None:
            self.steps.on_replica[self.verify_id].discard(self)
        self.verify_id, self.step_context = replica_id, None  # a step that moved replicas times nothing
        if replica_id is not None:
            self.steps.on_replica[replica_id].add(self)

    def context(self) -> StepContext | None:
        """The step as the pure core sees it; None while the verify replica's heartbeat has no latency model."""
        view = self.steps.view
        verify = view.get(self.verify_id) if self.verify_id else None
        model = latency_model(verify)
        if model is None:
            return None
        draft = view.get(self.draft_id) if self.draft_id else None
        batch = max(1, round(verify.step_batch) if verify.step_batch else verify.sessions)
        load = StepLoad(
            batch=batch, other_tokens=round((verify.step_tokens or 1.0) * (batch - 1)),
            other_yield=(verify.tokens_per_step or 1.0) * (batch - 1),
            context=verify.mean_context or float(self.state.context_tokens),
            draft_batch=max(0, round(draft.step_batch) - 1) if draft is not None else 0,
            overhead_ms=self.steps.overhead_ms.get(self.verify_id, 0.0),
            draft_overhead_ms=self.steps.draft_overhead_ms.get(self.verify_id, 0.0),
            step_cap_ms=self.steps.step_cap_ms(self.verify_id, self) if self.policy.needs_profile else math.inf)
        return StepContext(load, model, latency_model(draft), view.calibrator, self.steps.max_spec_len)

    def budget(self, room: int) -> DraftBudget:
        """This step's draft budget from the request's policy, at most `room` drafts."""
        self._update()
        self.asked_at = time.perf_counter()
        self.step_context = ctx = self.context()
        if ctx is None and self.policy.needs_profile:
            return NO_DRAFTS
        budget = self.policy.budgets([self.state], ctx or self._no_load())[0].capped(
            min(room, self.steps.max_spec_len))
        rate = self.state.acceptance.rate(self.steps.view.calibrator.mean_acceptance(self.state.greedy))
        self.expected = expected_tokens(geometric_curve(rate, budget.max_tokens))
        return budget

    def _no_load(self) -> StepContext:
        """For the policies that read no load and no latency model, before a replica's heartbeat says them."""
        return StepContext(StepLoad(), LatencyModel(), None, self.steps.view.calibrator, self.steps.max_spec_len)

    def curve_update(self, budget: DraftBudget) -> tuple[float, ...]:
        """The acceptance curve to send with this budget: only when it changed since last sent."""
        if budget.curve is None or budget.curve.knots == self.curve_sent:
            return ()
        self.curve_sent = budget.curve.knots
        return budget.curve.knots

    def committed(self, token_ids: list[int], num_accepted: int, confidences: list[float]) -> None:
        """A verification's outcome: `confidences` of the drafts it tested (none at k = 0)."""
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
        elif self.step_context is not None and self.verify_id is not None:
            self._observe_step((now - self.asked_at) * 1e3, len(confidences))
        if confidences:
            calibrated = self.steps.view.calibrator.curve(self.state.greedy)
            self.state.acceptance.observe(confidences, num_accepted, calibrated)
            self.policy.observe([self.state], self.context() or self._no_load(), [len(confidences)], [num_accepted])
        if self.catch_up.num_accepted is None:
            self.catch_up.num_accepted = num_accepted if confidences else 0
        self.catch_up.token_ids += token_ids
        self.state.output_tokens += len(token_ids)
        self.state.context_tokens += len(token_ids)

    def _observe_step(self, elapsed_ms: float, drafted: int) -> None:
        """The step's time beyond its predicted forwards: the replica's overhead (a step without drafts), or what
        drafting added besides the draft forwards (a step with)."""
        ctx = self.step_context
        forwards = dataclasses.replace(ctx, load=dataclasses.replace(ctx.load, overhead_ms=0.0, draft_overhead_ms=0.0))
        beyond = elapsed_ms - step_time_ms(forwards, [drafted])
        if drafted:
            self.steps.observe(self.steps.draft_overhead_ms, self.verify_id, max(0.0, beyond - ctx.load.overhead_ms))
        else:
            self.steps.observe(self.steps.overhead_ms, self.verify_id, max(0.0, beyond))

    def take_catch_up(self) -> CatchUp:
        """What the next draft step carries; the draft session's drafts are then outstanding."""
        catch_up, self.catch_up = self.catch_up, CatchUp(num_accepted=None)
        return catch_up

    def _update(self) -> None:
        now = time.perf_counter()
        self.state.remaining_tokens = self.max_tokens - self.state.output_tokens
        self.state.since_arrival_s = now - self.start
        self.state.since_first_token_s = None if self.first_token is None else now - self.first_token

    def close(self) -> None:
        self.on_verify(None)

