"""The AdaSpec paper's rule (SoCC 2025; its released code): k is uniform across the batch and grown one draft
step at a time while the batch's goodput, computed from the draft's raw confidences, improves. The drafter
applies it over every row of its batch that carries it (`BatchGoodputRule`), from the step-time model here.
Left out: trimming the verification batch to a CUDA-graph size (there are no CUDA graphs on this path).
"""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import BatchGoodputRule, DraftBudget
from adaspec.speculation.efficiency import step_time_ms
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext


class PaperGoodput(Policy):
    name = "adaspec-paper"
    needs_profile = True

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        n = len(requests)
        token_ms = ctx.verify.per_token_ms(ctx.load.context)
        rows = n + ctx.load.draft_batch
        draft_ms = ctx.draft.predict(rows, rows, ctx.load.context) if ctx.draft is not None else 0.0
        rule = BatchGoodputRule(base_ms=step_time_ms(ctx, [0] * n) - n * token_ms, draft_ms=draft_ms,
                                token_ms=token_ms, hop_ms=ctx.load.draft_overhead_ms)
        return [DraftBudget(ctx.max_spec_len, batch_rule=rule)] * n
