"""Past saturation: every planned request drafting the same k, in the cycle that a replica's batch settles into.

Where the draft model runs apart from the verify model (a replica of its own: `StepLoad.draft_apart`), the batch is
large and prompts wait for the verify replica (it has work beyond the step: `StepLoad.prompt_backlog_tokens`),
requests that all draft fall into two halves that take turns: the verify replica checks one half while the draft
replica drafts for the other (`fixed:K` settles into this by itself). A request then waits one cycle per step:

    cycle(k) = overhead + V½ + max(V½, hop + Σ_{j ≤ k} t_d(⌈b_j / 2⌉ + b_other, ⌈b_j / 2⌉ + b_other, c))
    V½       = t_v(⌈b / 2⌉, ⌈(n_other + Σ_i (k_i + 1)) / 2⌉, c)

(b: the replica's batch, b_j: the planned requests drafting a j-th token, n_other: the other sequences' query tokens;
the time outside the forwards, `overhead`, is paid once a cycle as a plain step pays it once; hop: what a drafting
step measures beyond its forwards and that overhead, `draft_overhead_ms`: the round trip to the draft replica, and
where draft and verify share cores, what running at once costs them). A plain step takes
T(0) = overhead + t_v(b, n_other + n, c). Each request commits E_i(k) tokens a cycle, so the weighted goodput is
Σ_i w_i·E_i(k) / cycle(k). The step model of `efficiency.plan` times each step alone, drafting and verifying one
after the other, and past saturation never finds drafting worth it; the cycle hides the drafting of one half behind
the verification of the other, and spreads the time outside the forwards (the plain steps' queueing behind prompt
chunks, mostly) over E tokens instead of one. Without prompts waiting, the replica has gaps in which no other half
waits, and the drafting is not hidden: no cycle then.

`cycle_plan` takes the uniform k (each request capped by its room) with the best goodput among those that push no
request keeping its pace in a plain step past it, on average (cycle / E_i above its allowed time per token: a cycle
is the rhythm of many steps, not one step's tail), where it beats both the step plan's goodput and not drafting by the
switch margin. The drafter then drafts all k for everyone, as the cycle assumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adaspec.speculation.efficiency import Plan, expected_tokens, step_time_ms
from adaspec.speculation.step_state import StepContext

MIN_PIPELINE = 8  # planned requests: two halves of at least four, below which there is no batch to split


def cycle_ms(ctx: StepContext, ks: Sequence[int]) -> float:
    """cycle(k) of the module docstring for drafts `ks` of the planned requests (a draft model is needed)."""
    assert ctx.draft is not None, "a cycle needs the draft replica's latency model"
    load = ctx.load
    verify_half = ctx.verify.predict(math.ceil(load.batch / 2), math.ceil((load.other_tokens + sum(ks) + len(ks)) / 2),
                                     load.context)
    draft_half = load.draft_overhead_ms
    for depth in range(1, max(ks, default=0) + 1):
        rows = math.ceil(sum(k >= depth for k in ks) / 2) + load.draft_batch
        draft_half += ctx.draft.predict(rows, rows, load.context)
    return load.overhead_ms + verify_half + max(verify_half, draft_half)


def cycle_plan(ctx: StepContext, curves: Sequence[Sequence[float]], weights: Sequence[float],
               allowed_ms: Sequence[float], caps: Sequence[int], step_goodput: float,
               switch_margin: float = 0.0) -> Plan | None:
    """The best uniform-k cycle (module docstring), or None where there is none to take: too few requests, no draft
    replica apart, no prompt waiting, no k within the SLOs, or none beating `step_goodput` (the step plan's) and not
    drafting by `switch_margin`. Arguments as `efficiency.plan`'s; the plan's `step_ms` is the cycle."""
    n, load = len(curves), ctx.load
    if n < MIN_PIPELINE or ctx.draft is None or not load.draft_apart or load.prompt_backlog_tokens <= 0:
        return None
    plain_ms = step_time_ms(ctx, [0] * n)
    best: Plan | None = None
    for depth in range(1, max(caps, default=0) + 1):
        ks = [min(depth, cap) for cap in caps]
        expected = [expected_tokens(curve[:k]) for curve, k in zip(curves, ks)]
        cycle = cycle_ms(ctx, ks)
        if any(allowed >= plain_ms and cycle > allowed * e for allowed, e in zip(allowed_ms, expected)):
            continue  # someone keeping its pace at k = 0 would lose it
        goodput = (sum(w * e for w, e in zip(weights, expected)) + load.other_yield) / cycle
        if best is None or goodput > best.goodput:
            best = Plan(ks, cycle, goodput, thresholds=[0.0] * n, caps=list(ks))
    plain_goodput = (sum(weights) + load.other_yield) / plain_ms
    if best is None or best.goodput <= max(step_goodput, plain_goodput) * (1.0 + switch_margin):
        return None
    return best
