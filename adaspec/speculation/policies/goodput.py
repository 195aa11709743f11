"""SmartSpec / TurboSpec: one k for the batch, the one with the best predicted goodput, from the latency
profile, the live load and one global acceptance rate (no per-request acceptance, no SLOs)."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.efficiency import expected_tokens, step_time_ms
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext


class GlobalGoodput(Policy):
    name = "goodput"
    needs_profile = True

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        n = len(requests)
        rate = ctx.calibrator.mean_acceptance(greedy=all(r.greedy for r in requests))

        def goodput(k: int) -> float:
            return (n * expected_tokens([rate] * k) + ctx.load.other_yield) / step_time_ms(ctx, [k] * n)

        k = max(range(ctx.max_spec_len + 1), key=goodput)
        return [DraftBudget(k)] * n
