"""The efficiency model: expected tokens, step time, goodput, and the per-request plan that maximises it.

Per request i with k_i drafts whose cumulative acceptance probabilities are P_i1 ≥ P_i2 ≥ …:

    E_i  = 1 + Σ_{j ≤ k_i} P_ij                                   tokens the step commits for i
    T    = overhead + t_v(b, n_other + Σ_i (k_i + 1), c) + Σ_{j=1..max k} t_d(b_j + b_other, b_j + b_other, c)
           + [max k > 0]·draft overhead + [split]·t_v(0, 0, 0)
           (b_j: requests drafting a j-th token; no draft forward at all when every k_i = 0; the draft overhead
           is what drafting costs besides the forwards, e.g. the round trip to a draft replica; split: where the
           requests that draft nothing step ahead of those that draft (`StepLoad.split_phases`) and some but not
           all of them draft, the replica runs two verify forwards where it would run one: one more w0)
    G    = (Σ_i w_i·E_i + other yield) / T                            weighted goodput

`plan` grows the k_i depth by depth, giving each depth to the requests whose token there is worth most,
as long as that raises G (a token is worth drafting if it buys more than the step's average). Weights w_i favour
requests behind their TPOT SLO and discount those comfortably ahead. A token is not added if the step
would then push a request that keeps its pace now past it (T / E_m above its allowed time per token: a
request already behind gets its weight, not a veto), nor past `step_cap_ms`.

The plan also yields what the drafter needs to decide on live confidences: each request's threshold on
P_j (the cost of its last planned token, its own verification plus its share of the draft forward, in the
plan's goodput, over its weight) and its cap: the most drafts the SLOs allow, and no deeper than the
deepest planned depth unless the request is alone in its step and even a certain token would pay for a
draft forward of its own.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.speculation.step_state import StepContext

MIN_WEIGHT, MAX_WEIGHT = 0.5, 2.0


def expected_tokens(accept_probs: Sequence[float]) -> float:
    """E = 1 + Σ_j a_1·…·a_j for per-token acceptances a_j."""
    total, p = 1.0, 1.0
    for a in accept_probs:
        p *= a
        total += p
    return total


def geometric_curve(rate: float, k: int) -> list[float]:
    """P_j = rate^j for j = 1..k: the cumulative acceptances of drafts not yet drafted."""
    return [rate ** j for j in range(1, k + 1)]


def slo_weight(pace: float) -> float:
    """w from a request's pace (running TPOT / SLO): behind weighs more, ahead less, within [0.5, 2]."""
    return min(MAX_WEIGHT, max(MIN_WEIGHT, pace))


def step_time_ms(ctx: StepContext, ks: Sequence[int]) -> float:
    """T for drafts `ks` of the planned requests (module docstring)."""
    return StepShape.of(ks).ms(ctx)


@dataclass(frozen=True)
class StepShape:
    """A step of the planned requests as T sees it: their query tokens and, per depth j = 1, 2, ..., how many of
    them draft a j-th token. The step with one request's drafts changed is derived from it in time linear in the
    depth, not in the batch (the coordinator's event loop times every request of a replica's batch each step)."""

    query_tokens: int
    drafting_rows: tuple[int, ...]  # no trailing 0: as deep as the deepest request drafts
    requests: int

    @classmethod
    def of(cls, ks: Sequence[int]) -> StepShape:
        return cls(sum(ks) + len(ks), tuple(sum(k >= depth for k in ks) for depth in range(1, max(ks, default=0) + 1)),
                   len(ks))

    def with_k(self, old: int, new: int) -> StepShape:
        """The step with one request's `old` drafts made `new`."""
        rows = [(self.drafting_rows[depth - 1] if depth <= len(self.drafting_rows) else 0)
                - (new < depth <= old) + (old < depth <= new)
                for depth in range(1, max(len(self.drafting_rows), new) + 1)]
        while rows and not rows[-1]:
            rows.pop()
        return StepShape(self.query_tokens + new - old, tuple(rows), self.requests)

    def ms(self, ctx: StepContext) -> float:
        """T for the planned requests' query tokens to verify and their draft forwards (none: no draft forward),
        with the split's w0 where some of them but not all draft and `ctx.load.split_phases`."""
        load = ctx.load
        t = load.overhead_ms + ctx.verify.predict(load.batch, load.other_tokens + self.query_tokens, load.context)
        if ctx.draft is not None and self.drafting_rows:
            t += load.draft_overhead_ms
            for rows in self.drafting_rows:
                rows += load.draft_batch
                t += ctx.draft.predict(rows, rows, load.context)
        return t + split_ms(ctx, self.drafting_rows[0] if self.drafting_rows else 0, self.requests)


def split_ms(ctx: StepContext, drafting: int, requests: int) -> float:
    """The split's cost (module docstring): one more verify forward's fixed cost where `drafting` of the `requests`
    planned draft, some but not all, and those that do not step ahead (`StepLoad.split_phases`)."""
    return ctx.verify.predict(0, 0, 0.0) if ctx.load.split_phases and 0 < drafting < requests else 0.0


@dataclass(frozen=True)
class Plan:
    ks: list[int]  # planned drafts per request
    step_ms: float
    goodput: float  # weighted tokens per ms
    thresholds: list[float]  # per request: the P_j a live draft must reach to be worth its cost
    caps: list[int]  # per request: the most drafts the SLOs allow (given the others' plan)


def plan(ctx: StepContext, curves: Sequence[Sequence[float]], weights: Sequence[float],
         allowed_ms: Sequence[float], caps: Sequence[int], switch_margin: float = 0.0) -> Plan:
    """Choose k_i for every request (module docstring). `curves[i]`: P_i1, P_i2, … (at least caps[i] long);
    `allowed_ms[i]`: the time per token request i may take (inf: no constraint); `caps[i]`: its room.

    Depth by depth: a draft forward costs the same for one row as for several, so each depth is opened for
    the requests whose next token is worth most, as many as raise the goodput (a prefix of them, best
    first), or not at all; no deeper depth can pay where this one does not (P only falls with depth).
    `switch_margin`: the first depth opens only if it raises the goodput by this fraction (> 0: the requests
    were not drafting; < 0: they were), so a step near the break-even point does not flip between drafting
    and not: each switch costs more than the model sees (a draft session to catch up, steps out of phase)."""
    n = len(curves)
    load = ctx.load
    ks, expected = [0] * n, [1.0] * n
    step = step_time_ms(ctx, ks)
    value = sum(w * e for w, e in zip(weights, expected)) + load.other_yield
    token_ms = ctx.verify.per_token_ms(load.context)
    share_ms = [token_ms] * n  # the cost of each request's last planned token: its token, its share of the forward

    def forward_ms(rows: int, depth: int) -> float:
        """A draft forward of `rows` planned requests at `depth` (the first also pays the draft overhead)."""
        if ctx.draft is None:
            return 0.0
        rows += load.draft_batch
        return ctx.draft.predict(rows, rows, load.context) + (load.draft_overhead_ms if depth == 1 else 0.0)

    def slo_allows(new_step: float, added: set[int], depth: int) -> bool:
        """No request that meets its pace now is pushed past it (one already behind weighs more instead)."""
        if new_step > load.step_cap_ms:
            return False
        for m in range(n):
            e_new = expected[m] + (curves[m][depth - 1] if m in added else 0.0)
            if new_step / e_new > allowed_ms[m] >= step / expected[m]:
                return False
        return True

    def added_ms(m: int, depth: int) -> float:
        """What opening `depth` for m requests adds to the step (at depth 1, the split if some go without)."""
        return m * token_ms + forward_ms(m, depth) + (split_ms(ctx, m, n) if depth == 1 else 0.0)

    for depth in range(1, max(caps, default=0) + 1):
        candidates = sorted((i for i in range(n) if ks[i] == depth - 1 and caps[i] >= depth),
                            key=lambda i: -weights[i] * curves[i][depth - 1])
        best_m, best_goodput, gain = 0, value / step * (1.0 + (switch_margin if depth == 1 else 0.0)), 0.0
        for m, i in enumerate(candidates, 1):
            gain += weights[i] * curves[i][depth - 1]
            goodput = (value + gain) / (step + added_ms(m, depth))
            if goodput > best_goodput:
                best_m, best_goodput = m, goodput
        while best_m and not slo_allows(step + added_ms(best_m, depth), set(candidates[:best_m]), depth):
            best_m -= 1  # the least valuable request of the depth goes first
        if not best_m:
            break
        chosen = candidates[:best_m]
        step += added_ms(best_m, depth)
        for i in chosen:
            ks[i] = depth
            expected[i] += curves[i][depth - 1]
            value += weights[i] * curves[i][depth - 1]
            share_ms[i] = token_ms + forward_ms(best_m, depth) / best_m
    goodput = value / step
    thresholds = [goodput * share_ms[i] / weights[i] for i in range(n)]
    # Past the deepest planned depth a draft costs a forward of its own, which the whole step waits for: only a
    # request alone in its step may go there on live confidence, and only if a certain token (P = 1) would be
    # worth that.
    deepest = max(ks, default=0)
    alone_ms = token_ms + forward_ms(1, deepest + 1)
    alone = load.batch == 1 and goodput * alone_ms / weights[0] < 1.0 if n == 1 else False
    limits = _slo_caps(ctx, ks, caps, allowed_ms, expected, step)
    limits = [lim if alone else min(lim, deepest) for lim in limits]
    return Plan(ks, step, goodput, thresholds, limits)


def _slo_caps(ctx: StepContext, ks: list[int], caps: Sequence[int], allowed_ms: Sequence[float],
              expected: list[float], step: float) -> list[int]:
    """Per request i, the most drafts it may take, the others keeping their plan, before the step outgrows an SLO
    of another request (its own gains from them). Linear in the requests (each step plans a replica's whole batch,
    up to hundreds of requests, on the coordinator's event loop): the others' tightest SLO is one of the two
    tightest of all, and a step with one request's drafts raised is timed from the plan's drafting rows."""
    tightest = heapq.nsmallest(2, ((allowed_ms[m] * expected[m], m) for m in range(len(ks))
                                   if step / expected[m] <= allowed_ms[m]))
    shape = StepShape.of(ks)
    limits = []
    for i, cap in enumerate(caps):
        limit = min([ctx.load.step_cap_ms] + [bound for bound, m in tightest if m != i][:1])
        k = ks[i] if not math.isinf(limit) else cap
        while k < cap:
            k += 1
            if shape.with_k(ks[i], k).ms(ctx) > limit:
                k -= 1
                break
        limits.append(k)
    return limits
