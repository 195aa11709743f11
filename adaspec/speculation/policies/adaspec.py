"""AdaSpec: per request and per step, from the calibrated acceptance, the latency profile, the live load and
each request's SLOs (the rule and its formulas: docs/adaptive-speculation.md).

The plan (`efficiency.plan`) gives each request k drafts where a token buys more than the step's average,
weighted by how far the request is behind its TPOT SLO, never lengthening the step past what any
request's SLO allows. The drafter then stops each request on its live confidences: a draft is kept
while P_j, from this request's calibrated acceptance curve, clears the marginal cost of drafting it.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.efficiency import Plan, geometric_curve, plan, slo_weight
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext


class AdaSpec(Policy):
    name = "adaspec"
    needs_profile = True

    def plan(self, requests: Sequence[RequestState], ctx: StepContext) -> Plan:
        k = ctx.max_spec_len
        curves = []
        for r in requests:
            prior = ctx.calibrator.mean_acceptance(r.greedy)
            curves.append(geometric_curve(r.acceptance.rate(prior), k))
        return plan(ctx, curves, [slo_weight(r.pace()) for r in requests], [r.allowed_token_ms() for r in requests],
                    [min(k, max(0, r.remaining_tokens - 1)) for r in requests])

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        p = self.plan(requests, ctx)
        budgets = []
        for r, k, cap, threshold in zip(requests, p.ks, p.caps, p.thresholds):
            if not k:
                budgets.append(NO_DRAFTS)
                continue
            curve = r.acceptance.curve(ctx.calibrator.curve(r.greedy)).rounded()
            budgets.append(DraftBudget(max(k, cap), min_accept_prob=round(min(threshold, 1.0), 3), curve=curve))
        return budgets
