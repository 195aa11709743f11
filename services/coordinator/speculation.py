"""The coordinator's side of the speculation core: each request's state, its per-step budget, what it learns.

Per step of a request (`RequestSpeculation.budget`), its `RequestState` is brought up to date and its
policy (one instance per policy string in the coordinator, so rules that learn keep what they learned)
gets the step as the pure core sees it:
  - the load from the verify replica's heartbeat: sessions per engine step, their query tokens and yield,
    their context, its latency model; the draft replica's batch and latency model;
  - the acceptance prior: every verify replica's calibration counts, merged (`LoadView`);
  - the time outside the forwards on that replica (network, gathering: the observed step time of steps
    without drafts minus the model's prediction, averaged over this coordinator's requests there), and what
    a step that drafts costs on top of that besides its forwards, measured end to end on drafting steps: the
    draft replica's round trip, and the verify message that cannot leave before the drafts arrive (a step
    without drafts goes ahead of the previous reply). A recent mean, and its tail for the SLO checks, over this
    coordinator's requests of the policy (each learns from its own steps: a sample is also the latency model's
    error on the drafts' shape, which is the policy's; and a benchmark interleaving policies on one coordinator
    would otherwise let one decide another's drafting); only measured while requests draft, so left alone it
    decays (half-life `STALE_HALF_LIFE_S`) toward the least it has cost, and drafting is tried again if it pays at
    that cost.
A policy that plans the batch (`needs_profile`: adaspec, goodput, batch-schedule, adaspec-paper) gets every
request of this coordinator on the replica that uses it, as the engine gives it its batch: requests that
draft together share the draft forwards, which no request planning alone could count on. That joint plan
serves each of the group's requests once, so the group is planned once per step: the first request to ask again
starts the next step's plan, however far apart the event loop gets to the step's replies (a plan per reply would
cost the loop the square of the batch each step, and a loop that busy accepts no new calls); a plan older than
`PLAN_MAX_AGE_S` is not used (a request asking for the first time then, e.g. one that waited in the replica's
queue, gets the group's present state). A plan in which no request drafts serves the group's steps for up to
`PLAIN_PLAN_MAX_AGE_S` (past saturation, where it is the rule, planning every step cost `adaspec` 12–14 % of its
mean TPOT against `none` on two cores), so drafting starts again at most that late once the load falls. The other
sessions of the replica (other policies, other coordinators) are its load, as in the engine; the SLOs of
this coordinator's requests outside the group cap the step.

Tokens committed while a request drafts nothing are kept (`CatchUp`) and sent with its next draft step,
so a step at k = 0 never waits for the draft replica; the request's state tells its policy how many the draft
session will be fed then (all of its context before its first draft step: `RequestState.draft_lag_tokens`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from adaspec.services.coordinator.load_view import LoadView, latency_model

from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.efficiency import StepShape, expected_tokens, geometric_curve
from adaspec.speculation.latency_profile import LatencyModel
from adaspec.speculation.policies import Policy, make_policy
from adaspec.speculation.step_state import SLO_MARGIN, RequestState, StepContext, StepLoad

log = logging.getLogger(__name__)
OVERHEAD_WEIGHT = 0.05
DRAFT_SAMPLES = 32
STALE_HALF_LIFE_S = 5.0
PLAN_MAX_AGE_S = 0.25  # several steps, even of a replica's largest batch on a loaded event loop
PLAIN_PLAN_MAX_AGE_S = 0.1  # several steps of a loaded replica; short beside a request's life


class RecentSamples:
    """The last `DRAFT_SAMPLES` samples: their mean and their 90th percentile. The plan's goodput weighs expected step
    times, hence the mean, not a median: a drafting step's cost has a long tail (two hops, each may wait for the other
    replica's step or a busy core). On two cores at 4 req/s the median of its samples was 11.7 ms and their mean 19.1:
    with the median, drafting looked as if it paid where it cost 22 ms a token against 17.6 without. The SLO checks
    see the tail.

    While no new sample comes they decay (`STALE_HALF_LIFE_S`), so that drafting is tried again once the load that
    made it dear may have gone; toward the cheapest whole window of samples seen so far, not toward 0: drafting never
    costs less than it did at its cheapest, and where even that does not pay (a fast verify forward beside the hops)
    a cost decaying to 0 had the plan try drafting again every few seconds, each time at a loss (on two cores at
    1-4 req/s, mean k 0.5-0.8 and 1.06-1.19x `none`'s mean TPOT, where no fixed k beat `none`)."""

    def __init__(self):
        self.samples: deque[float] = deque(maxlen=DRAFT_SAMPLES)
        self.at = 0.0
        self.count = 0
        self.stats: tuple[float, float] = (0.0, 0.0)  # (mean, tail) of the samples, kept: read far more than added
        self.floor: tuple[float, float] = (0.0, 0.0)  # the lowest (mean, tail) of a whole window, once there is one

    def add(self, sample_ms: float, now: float) -> None:
        self.samples.append(sample_ms)
        self.at = now
        self.count += 1
        tail = sample_ms
        if len(self.samples) > 1:  # "inclusive": never past the largest sample
            tail = statistics.quantiles(self.samples, n=10, method="inclusive")[-1]
        self.stats = (statistics.fmean(self.samples), tail)
        if self.count == DRAFT_SAMPLES:
            self.floor = self.stats
        elif self.count % DRAFT_SAMPLES == 0:  # windows apart: the least of many overlapping ones would be too low
            self.floor = tuple(map(min, self.floor, self.stats))

    def now(self, now: float, less: float = 0.0) -> tuple[float, float]:
        """(mean, 90th percentile) at `now`, `less` taken off each (and off the floor) before they decay."""
        if not self.samples:
            return 0.0, 0.0
        decay = 0.5 ** ((now - self.at) / STALE_HALF_LIFE_S)
        values = [max(0.0, v - less) for v in self.stats]
        floors = [max(0.0, f - less) for f in self.floor]
        return tuple(f + (v - f) * decay for v, f in zip(values, floors))


@dataclass(frozen=True)
class PlannedForwards:
    """The forwards of the step a request's budget was planned for, as the latency model sees them (overheads
    excluded), timed once the step has run: the drafter may stop a request's drafting before its budget (stop
    rules), and a drafting step timed against the forwards of its full budget would look cheaper than it was."""

    ctx: StepContext  # the step, overheads zeroed
    shape: StepShape  # the planned requests' budgets
    budget: int  # this request's
    lag: int  # the context its draft session had not seen

    def ms(self, drafted: int) -> float:
        """The step's forward time with this request's `drafted` drafts and the others' budgets."""
        return self.shape.with_k(self.budget, drafted, self.lag).ms(self.ctx)


@dataclass
class JointPlan:
    at: float
    budgets: dict[RequestSpeculation, DraftBudget]
    ctx: StepContext  # the planned step, overheads zeroed
    given: set[RequestSpeculation] = field(default_factory=set)  # the requests that took their budget from it
    shape: StepShape = field(init=False)  # of the budgets

    def __post_init__(self):
        self.shape = StepShape.of([b.max_tokens for b in self.budgets.values()],
                                  [r.state.draft_lag_tokens for r in self.budgets])

    def serves(self, asking: RequestSpeculation, now: float) -> bool:
        """Whether the plan still gives `asking` its budget (module docstring): it planned for it, within
        `PLAN_MAX_AGE_S`, and this is the request's first ask of it; or nobody drafts in it, within
        `PLAIN_PLAN_MAX_AGE_S`."""
        age = now - self.at
        return asking in self.budgets and age <= PLAN_MAX_AGE_S and (
            asking not in self.given or (not self.shape.drafting_rows and age <= PLAIN_PLAN_MAX_AGE_S))

    def forwards(self, asking: RequestSpeculation) -> PlannedForwards:
        return PlannedForwards(self.ctx, self.shape, self.budgets[asking].max_tokens, asking.state.draft_lag_tokens)


class Steps:
    """Coordinator-wide: the policy instances, the requests on each verify replica, each replica's overheads."""

    def __init__(self, view: LoadView, max_spec_len: int):
        self.view, self.max_spec_len = view, max_spec_len
        self.policies: dict[str, Policy] = {}
        self.on_replica: dict[str, set[RequestSpeculation]] = defaultdict(set)
        # per verify replica and policy: a plain step's time outside its forwards (what it waits for besides them
        # depends on the steps it shares, so each policy learns its own from its own steps, like its drafting cost)
        self.overhead: dict[tuple[str, Policy], float] = {}
        # per draft replica and policy: what a drafting step costs beyond its forwards (a plain step's overhead included)
        self.draft_overhead: dict[tuple[str, Policy], RecentSamples] = defaultdict(RecentSamples)
        self._plans: dict[tuple[str, Policy], JointPlan] = {}

    def policy(self, spec: str) -> Policy:
        """This coordinator's instance of a policy (raises ValueError for a bad string)."""
        key = spec.strip()
        if key not in self.policies:
            self.policies[key] = make_policy(key, self.max_spec_len)
        return self.policies[key]

    def step_cap_ms(self, replica_id: str, planned: list[RequestSpeculation]) -> float:
        """The longest step this coordinator's other requests on the replica allow: each may take its allowed time
        per token times the tokens it expects per step (one already behind its pace allows none and sets no cap, as
        in a plan: `efficiency.plan`)."""
        skip = set(planned)  # a replica's whole batch, every step
        caps = [r.state.allowed_token_ms(SLO_MARGIN) * r.expected for r in self.on_replica.get(replica_id, ())
                if r not in skip]
        return min((c for c in caps if 0 < c < math.inf), default=math.inf)

    def joint_budget(self, asking: RequestSpeculation) -> tuple[DraftBudget, PlannedForwards | None]:
        """`asking`'s budget from its policy's plan of every request of this coordinator on its replica that uses
        the policy (module docstring), and the planned step's forwards (None without a latency model)."""
        key = (asking.verify_id, asking.policy)
        now = time.perf_counter()
        plan = self._plans.get(key)
        if plan is None or not plan.serves(asking, now):  # a new step, or a new request
            group = [r for r in self.on_replica[asking.verify_id] if r.policy is asking.policy] or [asking]
            for r in group:
                r.update(now)
            ctx = asking.context(group)
            if ctx is None:
                return NO_DRAFTS, None
            budgets = asking.policy.budgets([r.state for r in group], ctx)
            plan = JointPlan(now, dict(zip(group, budgets)), without_overheads(ctx))
            self._plans[key] = plan
            for r, budget in plan.budgets.items():
                r.expect(budget.max_tokens)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("plan", extra={"replica": asking.verify_id, "policy": str(asking.policy),
                                         "ks": [b.max_tokens for b in budgets],
                                         "thresholds": [round(b.min_accept_prob, 3) for b in budgets],
                                         "forward_ms": round(plan.shape.ms(plan.ctx), 2),
                                         "batch": ctx.load.batch,
                                         "overhead_ms": round(ctx.load.overhead_ms, 2),
                                         "draft_overhead_ms": round(ctx.load.draft_overhead_ms, 2),
                                         "draft_overhead_tail_ms": round(ctx.load.draft_overhead_tail_ms, 2),
                                         "step_cap_ms": round(ctx.load.step_cap_ms, 2),
                                         "allowed_ms": [round(r.state.allowed_token_ms(SLO_MARGIN), 1) for r in group],
                                         "rates": [round(r.state.acceptance_rate(ctx.calibrator), 2)
                                                   for r in group]})
        plan.given.add(asking)
        return plan.budgets[asking], plan.forwards(asking)

    def observe_overhead(self, replica_id: str, policy: Policy, sample_ms: float) -> None:
        old = self.overhead.get((replica_id, policy))
        self.overhead[replica_id, policy] = sample_ms if old is None else old + OVERHEAD_WEIGHT * (sample_ms - old)

    def overhead_ms(self, replica_id: str, policy: Policy) -> float:
        return self.overhead.get((replica_id, policy), 0.0)

    def draft_overhead_ms(self, draft_id: str | None, verify_id: str, policy: Policy, now: float) -> tuple[float, float]:
        """What a drafting step costs beyond its forwards and a plain step's overhead: (mean, tail). The samples are
        the drafting steps' whole time beyond their forwards, less the plain overhead as it is now: one taken before
        any plain step was timed (the first steps of a run) would otherwise count that overhead as drafting's for as
        long as it is kept (at 8 req/s, 32 ms where 10 were the plain steps' own: nothing drafted for the rest of
        the run)."""
        if not draft_id:
            return 0.0, 0.0
        return self.draft_overhead[draft_id, policy].now(now, less=self.overhead_ms(verify_id, policy))


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
        self.expected = 1.0  # the tokens the request expects per step at its current k
        self.curve_sent: tuple[float, ...] | None = None
        self.asked_at: float | None = None  # when the current step's budget was given
        self.forwards: PlannedForwards | None = None  # the current step's forwards (None: no latency model)
        self.drafting_steps = 0  # the first also prefills the draft session: it is not a fair sample
        self.draft_fed = False  # the draft session has had a step (before it, it has seen nothing but its open)

    def on_verify(self, replica_id: str | None) -> None:
        """The request now runs on this verify replica (None: on none)."""
        if self.verify_id is not None:
            self.steps.on_replica[self.verify_id].discard(self)
        self.verify_id, self.forwards = replica_id, None  # a step that moved replicas times nothing
        if replica_id is not None:
            self.steps.on_replica[replica_id].add(self)

    def context(self, planned: list[RequestSpeculation]) -> StepContext | None:
        """The step as the pure core sees it, for `planned` requests of this coordinator planned together (the
        rest of the replica's step is their load); None while the heartbeat has no latency model."""
        view = self.steps.view
        verify = view.get(self.verify_id) if self.verify_id else None
        model = latency_model(verify)
        if model is None:
            return None
        draft = view.get(self.draft_id) if self.draft_id else None
        batch = max(len(planned), round(verify.step_batch) if verify.step_batch else verify.sessions, 1)
        others = batch - len(planned)
        draft_overhead_ms, draft_overhead_tail_ms = self.steps.draft_overhead_ms(self.draft_id, self.verify_id,
                                                                                 self.policy, time.perf_counter())
        load = StepLoad(
            batch=batch, other_tokens=round((verify.step_tokens or 1.0) * others),
            other_yield=(verify.tokens_per_step or 1.0) * others,
            context=verify.mean_context or float(self.state.context_tokens),
            draft_batch=max(0, round(draft.step_batch) - len(planned)) if draft is not None else 0,
            overhead_ms=self.steps.overhead_ms(self.verify_id, self.policy),
            draft_overhead_ms=draft_overhead_ms, draft_overhead_tail_ms=draft_overhead_tail_ms,
            # only plans read the cap: a rule of a request's own would pay a scan of the replica's requests each step
            step_cap_ms=self.steps.step_cap_ms(self.verify_id, planned) if self.policy.needs_profile else math.inf,
            split_phases=True)
        return StepContext(load, model, latency_model(draft), view.calibrator, self.steps.max_spec_len)

    def budget(self, room: int) -> DraftBudget:
        """This step's draft budget from the request's policy, at most `room` drafts."""
        now = time.perf_counter()
        self.update(now)
        self.asked_at = now
        if self.policy.needs_profile and self.verify_id is not None:
            budget, self.forwards = self.steps.joint_budget(self)
        else:  # a rule of its own per request: itself alone, the replica's step its load
            ctx = self.context([self])
            budget = self.policy.budgets([self.state], ctx or self._no_load())[0]
            lag = self.state.draft_lag_tokens
            self.forwards = None if ctx is None else PlannedForwards(without_overheads(ctx), StepShape.of(
                [budget.max_tokens], [lag]), budget.max_tokens, lag)
            self.expect(budget.max_tokens)
        return budget.capped(min(room, self.steps.max_spec_len))

    def expect(self, k: int) -> None:
        self.expected = expected_tokens(geometric_curve(self.state.acceptance_rate(self.steps.view.calibrator), k))

    def _no_load(self) -> StepContext:
        """For the policies that read no load and no latency model, before a replica's heartbeat says them."""
        return StepContext(StepLoad(), LatencyModel(), None, self.steps.view.calibrator, self.steps.max_spec_len)

    def curve_update(self, budget: DraftBudget) -> tuple[float, ...]:
        """The acceptance curve to send with this budget: only when it changed since last sent."""
        if budget.curve is None or budget.curve.knots == self.curve_sent:
            return ()
        self.curve_sent = budget.curve.knots
        return budget.curve.knots

    def committed(self, token_ids: list[int], num_accepted: int, confidences: list[float],
                  asked_draft: bool | None = None) -> None:
        """A verification's outcome: `confidences` of the drafts it tested (none at k = 0); `asked_draft`: whether
        the step asked the draft replica (default: whether it tested drafts)."""
        now = time.perf_counter()
        asked_draft = bool(confidences) if asked_draft is None else asked_draft
        if self.first_token is None:
            self.first_token = now
        elif self.forwards is not None and self.verify_id is not None and asked_draft == bool(confidences):
            # (a step that asked for drafts and kept none is neither a plain step nor a timed drafting step)
            step_ms, forward_ms = (now - self.asked_at) * 1e3, self.forwards.ms(len(confidences))
            beyond = step_ms - forward_ms
            if log.isEnabledFor(logging.DEBUG):  # what the drafting cost is learnt from, step by step
                log.debug("step timed", extra={
                    "policy": str(self.policy), "drafts": len(confidences), "accepted": num_accepted,
                    "forward_ms": round(forward_ms, 2), "step_ms": round(step_ms, 2),
                    "overhead_ms": round(self.steps.overhead_ms(self.verify_id, self.policy), 2)})
            if not confidences:  # a step without drafts: the replica's overhead
                self.steps.observe_overhead(self.verify_id, self.policy, max(0.0, beyond))
            else:
                self.drafting_steps += 1
                if self.drafting_steps > 1 and self.draft_id is not None:  # less the plain overhead when used
                    self.steps.draft_overhead[self.draft_id, self.policy].add(beyond, now)  # unclipped: a mean
        if confidences:
            calibrated = self.steps.view.calibrator.curve(self.state.greedy)
            self.state.acceptance.observe(confidences, num_accepted, calibrated)
            if not self.policy.needs_profile:  # the batch rules learn nothing per request
                self.policy.observe([self.state], self.context([self]) or self._no_load(), [len(confidences)],
                                    [num_accepted])
        if self.catch_up.num_accepted is None:
            self.catch_up.num_accepted = num_accepted if confidences else 0
        self.catch_up.token_ids += token_ids
        self.state.output_tokens += len(token_ids)
        self.state.context_tokens += len(token_ids)

    def take_catch_up(self) -> CatchUp:
        """What the next draft step carries; the draft session's drafts are then outstanding."""
        catch_up, self.catch_up = self.catch_up, CatchUp(num_accepted=None)
        self.draft_fed = True
        return catch_up

    def update(self, now: float) -> None:
        self.state.remaining_tokens = self.max_tokens - self.state.output_tokens
        self.state.since_arrival_s = now - self.start
        self.state.since_first_token_s = None if self.first_token is None else now - self.first_token
        # the draft session prefills its prompt at its first step; later steps feed what it was not sent since
        # (its accepted drafts it has already)
        unseen = (len(self.catch_up.token_ids) - (self.catch_up.num_accepted or 0) if self.draft_fed
                  else self.state.context_tokens)
        self.state.draft_lag_tokens = max(0, unseen - 1)

    def close(self) -> None:
        self.on_verify(None)


def without_overheads(ctx: StepContext) -> StepContext:
    """The step with no time outside its forwards: what the latency model alone predicts for it."""
    return dataclasses.replace(ctx, load=dataclasses.replace(ctx.load, overhead_ms=0.0, draft_overhead_ms=0.0))
