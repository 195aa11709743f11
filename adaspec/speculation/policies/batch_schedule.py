"""vLLM Dynamic SD / TensorRT-LLM `draft_len_schedule`: one k for the whole batch, from a table keyed by batch
size, built once (offline, in those systems) from the latency profile and the acceptance known then: for
each batch size, the k with the best predicted goodput b·E(α, k) / T(b, k)."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.efficiency import expected_tokens
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext

TABLE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def best_uniform_k(ctx: StepContext, batch: int, rate: float, context: float) -> int:
    """argmax_k of b·E(rate, k) / T(b, k) for b sequences all drafting k (no other load)."""
    def goodput(k: int) -> float:
        step = ctx.verify.predict(batch, batch * (k + 1), context)
        if ctx.draft is not None:
            step += k * ctx.draft.predict(batch, batch, context)
        return batch * expected_tokens([rate] * k) / step

    return max(range(ctx.max_spec_len + 1), key=goodput)


class BatchSchedule(Policy):
    name = "batch-schedule"
    needs_profile = True

    def __init__(self):
        self.table: dict[int, int] | None = None

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        if self.table is None:
            rate = ctx.calibrator.mean_acceptance(greedy=all(r.greedy for r in requests))
            context = ctx.load.context or 256.0
            self.table = {b: best_uniform_k(ctx, b, rate, context) for b in TABLE_BATCHES}
        batch = max([b for b in self.table if b <= max(ctx.load.batch, 1)])
        return [DraftBudget(min(self.table[batch], ctx.max_spec_len))] * len(requests)
