"""AdaSpec: per request and per step, from the calibrated acceptance, the latency profile, the live load and
each request's SLOs (the rule and its formulas: docs/adaptive-speculation.md).

The plan (`efficiency.plan`) gives each request k drafts where a token buys more than the step's average,
weighted by how far the request is behind its TPOT SLO, never lengthening the step past what any
request's SLO allows, with a margin before the batch starts or stops drafting. The drafter then stops
each request on its live confidences: it drafts on while the next draft's P_j, from this request's
calibrated acceptance curve, is expected to clear the marginal cost of drafting it.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.efficiency import Plan, geometric_curve, plan, slo_weight
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import SLO_MARGIN, RequestState, StepContext

SWITCH_MARGIN = 0.05  # hysteresis between drafting and not (efficiency.plan)


class AdaSpec(Policy):
    name = "adaspec"
    needs_profile = True

    def plan(self, requests: Sequence[RequestState], ctx: StepContext) -> Plan:
        k = ctx.max_spec_len
        curves = []
        for r in requests:
            curves.append(geometric_curve(r.acceptance_rate(ctx.calibrator), k))
        drafting = sum(r.memo.get("drafting", False) for r in requests) * 2 >= len(requests)
        return plan(ctx, curves, [slo_weight(r.pace()) for r in requests],
                    [r.allowed_token_ms(SLO_MARGIN) for r in requests],
                    [min(k, max(0, r.remaining_tokens - 1)) for r in requests],
                    switch_margin=-SWITCH_MARGIN if drafting else SWITCH_MARGIN,
                    draft_lags=[r.draft_lag_tokens for r in requests],
                    tokens_left=[r.remaining_tokens for r in requests])

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        p = self.plan(requests, ctx)
        for r, k in zip(requests, p.ks):
            r.memo["drafting"] = k > 0
        budgets = []
        for r, k, cap, threshold in zip(requests, p.ks, p.caps, p.thresholds):
            if not k:
                budgets.append(NO_DRAFTS)
                continue
            curve = r.acceptance.curve(ctx.calibrator.curve(r.greedy)).rounded()
            budgets.append(DraftBudget(max(k, cap), min_accept_prob=round(min(threshold, 1.0), 3), curve=curve))
        return budgets
