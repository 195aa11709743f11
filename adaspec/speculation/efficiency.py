"""The efficiency model: expected tokens, step time, goodput, and the per-request plan that maximises it.

Per request i with k_i drafts whose cumulative acceptance probabilities are P_i1 ≥ P_i2 ≥ …:

    E_i  = 1 + Σ_{j ≤ k_i} P_ij                                   tokens the step commits for i
    T    = overhead + t_v(b, n_other + Σ_i (k_i + 1), c) + Σ_{j=1..max k} t_d(b_j + b_other, b_j + b_other + L_j, c)
           + [max k > 0]·draft overhead + [split]·t_v(0, 0, 0)
           (b_j: requests drafting a j-th token; L_1: the context the drafting requests' draft sessions have not
           seen yet, fed in the first draft forward (a fresh session's whole prompt, the tokens committed while a
           request drafted nothing), L_j = 0 deeper; no draft forward at all when every k_i = 0; the draft overhead
           is what drafting costs besides the forwards, e.g. the round trip to a draft replica; split: where the
           requests that draft nothing step ahead of those that draft (`StepLoad.split_phases`) and some but not
           all of them draft, the replica runs two verify forwards where it would run one: one more w0)
    G    = (Σ_i w_i·E_i + other yield) / T                            weighted goodput

`plan` grows the k_i depth by depth, giving each depth to the requests whose token there is worth most,
as long as that raises G (a token is worth drafting if it buys more than the step's average); the first depth,
which carries drafting's fixed costs alone, opens where the plan grown from it beats not drafting. Feeding a draft
session what it has not seen is paid once and serves every step the request drafts after it: G charges it spread
over the steps the request has left (the SLO checks see the whole of it, the step being that long). Weights w_i favour
requests behind their TPOT SLO and discount those comfortably ahead. A token is not added if the step
would then push a request that keeps its pace now past it (T / E_m above its allowed time per token: a
request already behind gets its weight, not a veto, unless the token is its own and makes it slower on average),
nor past `step_cap_ms`; these two checks time a step that drafts with the draft overhead at its tail
(`StepLoad.draft_overhead_tail_ms`), G with its mean.

The plan also yields what the drafter needs to decide on live confidences: each request's threshold on
P_j (the cost of its last planned token, its own verification plus its share of the draft forward, in the
plan's goodput, over its weight) and its cap: the most drafts the SLOs allow, and no deeper than the
deepest planned depth unless the request is alone in its step and even a certain token would pay for a
draft forward of its own.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
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
    them draft a j-th token, and the unseen context their draft sessions are fed first (L_1). The step with one
    request's drafts changed is derived from it in time linear in the depth, not in the batch (the coordinator's
    event loop times every request of a replica's batch each step)."""

    query_tokens: int
    drafting_rows: tuple[int, ...]  # no trailing 0: as deep as the deepest request drafts
    requests: int
    draft_lag_tokens: int = 0  # L_1: of the requests that draft

    @classmethod
    def of(cls, ks: Sequence[int], lags: Sequence[int] = ()) -> StepShape:
        """`lags[i]`: the context request i's draft session has not seen (none given: 0)."""
        return cls(sum(ks) + len(ks), tuple(sum(k >= depth for k in ks) for depth in range(1, max(ks, default=0) + 1)),
                   len(ks), sum(lag for k, lag in zip(ks, lags) if k))

    def with_k(self, old: int, new: int, lag: int = 0) -> StepShape:
        """The step with one request's `old` drafts made `new` (`lag`: its draft session's unseen context)."""
        rows = [(self.drafting_rows[depth - 1] if depth <= len(self.drafting_rows) else 0)
                - (new < depth <= old) + (old < depth <= new)
                for depth in range(1, max(len(self.drafting_rows), new) + 1)]
        while rows and not rows[-1]:
            rows.pop()
        return StepShape(self.query_tokens + new - old, tuple(rows), self.requests,
                         self.draft_lag_tokens + lag * ((new > 0) - (old > 0)))

    def ms(self, ctx: StepContext) -> float:
        """T for the planned requests' query tokens to verify and their draft forwards (none: no draft forward),
        with the split's w0 where some of them but not all draft and `ctx.load.split_phases`."""
        load = ctx.load
        t = load.overhead_ms + ctx.verify.predict(load.batch, load.other_tokens + self.query_tokens, load.context)
        if ctx.draft is not None and self.drafting_rows:
            t += load.draft_overhead_ms
            lag = self.draft_lag_tokens
            for rows in self.drafting_rows:
                rows += load.draft_batch
                t += ctx.draft.predict(rows, rows + lag, load.context)
                lag = 0
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


@dataclass
class _Growing:
    """A plan being grown depth by depth (`plan`)."""

    ks: list[int]
    expected: list[float]  # E_i
    share_ms: list[float]  # the cost of each request's last planned token: its token, its share of the forward
    step: float  # T
    charged: float  # T̃: the step as G charges it, feeding unseen context spread over the steps it serves
    value: float  # Σ w_i·E_i + other yield

    def copy(self) -> _Growing:
        return _Growing(list(self.ks), list(self.expected), list(self.share_ms), self.step, self.charged, self.value)


def plan(ctx: StepContext, curves: Sequence[Sequence[float]], weights: Sequence[float],
         allowed_ms: Sequence[float], caps: Sequence[int], switch_margin: float = 0.0,
         draft_lags: Sequence[int] = (), tokens_left: Sequence[int] = ()) -> Plan:
    """Choose k_i for every request (module docstring). `curves[i]`: P_i1, P_i2, … (at least caps[i] long);
    `allowed_ms[i]`: the time per token request i may take (inf: no constraint); `caps[i]`: its room;
    `draft_lags[i]`: the context its draft session has not seen (default 0); `tokens_left[i]`: the most it may
    still generate, over which feeding that context is spread in G (default: charged to this step alone).

    Depth by depth: a draft forward costs the same for one row as for several, so each depth is opened for
    the requests whose next token is worth most, as many as raise the goodput (a prefix of them, best
    first), or not at all; no deeper depth can pay where this one does not (P only falls with depth).
    `switch_margin`: the requests draft only if that raises the goodput by this fraction (> 0: they were not
    drafting; < 0: they were), so a step near the break-even point does not flip between drafting and not: each
    switch costs more than the model sees (a draft session to catch up, steps out of phase). The first depth pays
    the step's fixed costs of drafting (draft overhead, split, unseen context) alone: where it does not open on its
    own gain, the plan that opens it for its best prefix and grows on is taken if it clears the margin."""
    n = len(curves)
    load = ctx.load
    token_ms = ctx.verify.per_token_ms(load.context)
    lag_ms = [_lag_ms(ctx, lag) for lag in draft_lags] + [0.0] * (n - len(draft_lags))
    lag_charged = [ms / max(1.0, tokens_left[i] / (1.0 + curves[i][0])) if i < len(tokens_left) and curves[i] else ms
                   for i, ms in enumerate(lag_ms)]
    tail_ms = max(0.0, load.draft_overhead_tail_ms - load.draft_overhead_ms) if ctx.draft is not None else 0.0
    split = split_ms(ctx, 1, 2)  # where some of the requests draft but not all (`split_ms`)

    draft_forward_ms: dict[int, float] = {}  # by rows: each depth and each prefix of a depth asks again

    def forward_ms(rows: int, depth: int) -> float:
        """A draft forward of `rows` planned requests at `depth` (the first also pays the draft overhead)."""
        if ctx.draft is None:
            return 0.0
        if rows not in draft_forward_ms:
            draft_forward_ms[rows] = ctx.draft.predict(rows + load.draft_batch, rows + load.draft_batch, load.context)
        return draft_forward_ms[rows] + (load.draft_overhead_ms if depth == 1 else 0.0)

    def slo_allows(g: _Growing, candidates: list[int], depth: int) -> Callable[[int, float], bool]:
        """Whether `depth` may open for the first m `candidates`, the step then `new_step` long: no request that meets
        its pace now is pushed past it, the step that drafts timed at the tail of its cost (one already behind weighs
        more instead); none already behind drafts where its own drafts make it slower, on average (it has to catch up
        in expectation). Each request bounds the step: one keeping its pace, at its tail, by its allowed time per
        token times the tokens it commits (more if it drafts at this depth); one behind that drafts, on average, by
        its time per token now times them. Their minima over the requests that draft (a prefix of the candidates) and
        those that do not are kept for every m, so that each m is checked in O(1): the plan runs on the coordinator's
        event loop for a replica's whole batch, and dropping the candidates one by one must not cost its square."""
        keeps_pace = [allowed_ms[m] >= g.step / g.expected[m] for m in range(n)]

        def tail_bound(m: int, e: float) -> float:
            return allowed_ms[m] * e if keeps_pace[m] else math.inf

        def mean_bound(m: int, e: float) -> float:
            return math.inf if keeps_pace[m] else g.step / g.expected[m] * e

        is_candidate = set(candidates)
        others = min((tail_bound(m, g.expected[m]) for m in range(n) if m not in is_candidate), default=math.inf)
        # [j]: over the candidates from j on, which do not draft when m = j; over the first j, which do
        waiting = [*itertools.accumulate((tail_bound(i, g.expected[i]) for i in reversed(candidates)), min,
                                         initial=math.inf)][::-1]
        drafting = [(i, g.expected[i] + curves[i][depth - 1]) for i in candidates]  # its tokens if it drafts
        drafting_tail = [*itertools.accumulate((tail_bound(i, e) for i, e in drafting), min, initial=math.inf)]
        drafting_mean = [*itertools.accumulate((mean_bound(i, e) for i, e in drafting), min, initial=math.inf)]

        def allows(m: int, new_step: float) -> bool:
            at_tail = new_step + tail_ms
            return (at_tail <= min(load.step_cap_ms, others, waiting[m], drafting_tail[m])
                    and new_step <= drafting_mean[m])

        return allows

    def added_ms(m: int, depth: int) -> float:
        """What opening `depth` for m requests adds to the step (at depth 1, the split if some go without)."""
        return m * token_ms + forward_ms(m, depth) + (split if depth == 1 and m < n else 0.0)

    def grow(g: _Growing, first_margin: float | None) -> _Growing:
        """Open depths while they raise the goodput; the first only by `first_margin` more (None: the first opens
        for its best prefix of requests whatever it gains alone)."""
        for depth in range(1, max(caps, default=0) + 1):
            candidates = sorted((i for i in range(n) if g.ks[i] == depth - 1 and caps[i] >= depth),
                                key=lambda i: -weights[i] * curves[i][depth - 1])
            # what feeding the unseen context of the first m candidates adds: to the step, and as G charges it
            fed = fed_charged = [0.0] * (len(candidates) + 1)
            if depth == 1:
                fed = [0.0, *itertools.accumulate(lag_ms[i] for i in candidates)]
                fed_charged = [0.0, *itertools.accumulate(lag_charged[i] for i in candidates)]
            margin = first_margin if depth == 1 else 0.0
            best_m, best_goodput, gain = 0, -math.inf if margin is None else g.value / g.charged * (1.0 + margin), 0.0
            for m, i in enumerate(candidates, 1):
                gain += weights[i] * curves[i][depth - 1]
                goodput = (g.value + gain) / (g.charged + added_ms(m, depth) + fed_charged[m])
                if goodput > best_goodput:
                    best_m, best_goodput = m, goodput
            allows = slo_allows(g, candidates, depth)
            while best_m and not allows(best_m, g.step + added_ms(best_m, depth) + fed[best_m]):
                best_m -= 1  # the least valuable request of the depth goes first
            if not best_m:
                break
            g.step += added_ms(best_m, depth) + fed[best_m]
            g.charged += added_ms(best_m, depth) + fed_charged[best_m]
            for i in candidates[:best_m]:
                g.ks[i] = depth
                g.expected[i] += curves[i][depth - 1]
                g.value += weights[i] * curves[i][depth - 1]
                g.share_ms[i] = token_ms + forward_ms(best_m, depth) / best_m
        return g

    step = step_time_ms(ctx, [0] * n)
    plain = _Growing([0] * n, [1.0] * n, [token_ms] * n, step, step, sum(weights) + load.other_yield)
    g = grow(plain.copy(), switch_margin)
    if not any(g.ks):
        # The first depth pays drafting's fixed costs (the draft overhead, the split, unseen context) alone, and may
        # not pay them where the depths after it would: the plan that opens it whatever, against not drafting.
        opened = grow(plain.copy(), None)
        if opened.value / opened.charged > plain.value / plain.charged * (1.0 + switch_margin):
            g = opened
    ks, goodput = g.ks, g.value / g.charged
    thresholds = [goodput * g.share_ms[i] / weights[i] for i in range(n)]
    # Past the deepest planned depth a draft costs a forward of its own, which the whole step waits for: only a
    # request alone in its step may go there on live confidence, and only if a certain token (P = 1) would be
    # worth that.
    deepest = max(ks, default=0)
    alone_ms = token_ms + forward_ms(1, deepest + 1) + (lag_charged[0] if n == 1 and not deepest else 0.0)
    alone = load.batch == 1 and goodput * alone_ms / weights[0] < 1.0 if n == 1 else False
    limits = _slo_caps(ctx, ks, caps, allowed_ms, g.expected, g.step, list(draft_lags) + [0] * (n - len(draft_lags)),
                       tail_ms)
    limits = [lim if alone else min(lim, deepest) for lim in limits]
    return Plan(ks, g.step, goodput, thresholds, limits)


def _lag_ms(ctx: StepContext, lag: int) -> float:
    """What feeding `lag` unseen tokens adds to a request's first draft forward."""
    if ctx.draft is None or lag <= 0:
        return 0.0
    rows = 1 + ctx.load.draft_batch
    return max(0.0, ctx.draft.predict(rows, rows + lag, ctx.load.context) - ctx.draft.predict(rows, rows,
                                                                                            ctx.load.context))


def _slo_caps(ctx: StepContext, ks: list[int], caps: Sequence[int], allowed_ms: Sequence[float],
              expected: list[float], step: float, lags: Sequence[int], tail_ms: float) -> list[int]:
    """Per request i, the most drafts it may take, the others keeping their plan, before the step (drafting, at the
    tail of its cost: `tail_ms` more) outgrows an SLO of another request (its own gains from them). Linear in the
    requests (each step plans a replica's whole batch, up to hundreds of requests, on the coordinator's event loop):
    the others' tightest SLO is one of the two tightest of all, and a step with one request's drafts raised is timed
    from the plan's drafting rows."""
    tightest = heapq.nsmallest(2, ((allowed_ms[m] * expected[m], m) for m in range(len(ks))
                                   if step / expected[m] <= allowed_ms[m]))
    shape = StepShape.of(ks, lags)
    raised: dict[tuple[int, int, int], float] = {}

    def raised_ms(i: int, k: int) -> float:
        """The step with request i's drafts raised to k, at the tail of drafting's cost: requests of the same plan (and
        lag, fed only by a first draft) raise it alike, so it is timed once for them."""
        key = ks[i], k, 0 if ks[i] else lags[i]
        if key not in raised:
            raised[key] = shape.with_k(*key).ms(ctx) + tail_ms
        return raised[key]

    limits = []
    for i, cap in enumerate(caps):
        limit = min([ctx.load.step_cap_ms] + [bound for bound, m in tightest if m != i][:1])
        if math.isinf(limit):
            limits.append(cap)
            continue
        # The most drafts up to the first that does not fit. The step grows with k from the first draft on (the
        # first may end the split instead), so past it a bisection finds the same k as trying each in turn; the
        # next draft is tried alone first, as it is mostly the one that does not fit.
        lo = ks[i]
        if lo < cap and raised_ms(i, lo + 1) <= limit:
            lo, hi = lo + 1, cap
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if raised_ms(i, mid) <= limit else (lo, mid - 1)
        limits.append(lo)
    return limits
