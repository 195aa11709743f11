"""SGLang `--speculative-adaptive`: an exponential moving average of the accepted length per step, kept per
batch-size bucket, picks one of a few pre-built k tiers: the smallest tier above the average accepted
length (so a tier whose drafts keep being accepted in full moves up one). Starts at the top tier."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext

TIERS = (1, 2, 4, 8)
EMA_WEIGHT = 0.2


def bucket(batch: int) -> int:
    """Power-of-two buckets: 1, 2-3, 4-7, ..."""
    return max(1, batch).bit_length()


class EmaTiers(Policy):
    name = "ema"

    def __init__(self):
        self.accepted: dict[int, float] = {}  # bucket -> EMA of accepted drafts per step

    def tiers(self, ctx: StepContext) -> list[int]:
        return [t for t in TIERS if t < ctx.max_spec_len] + [ctx.max_spec_len] if ctx.max_spec_len else [0]

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        tiers = self.tiers(ctx)
        ema = self.accepted.get(bucket(ctx.load.batch))
        k = tiers[-1] if ema is None else next((t for t in tiers if t >= ema + 1), tiers[-1])
        return [DraftBudget(k)] * len(requests)

    def observe(self, requests: Sequence[RequestState], ctx: StepContext, drafted: Sequence[int],
                accepted: Sequence[int]) -> None:
        steps = [a for d, a in zip(drafted, accepted) if d]
        if steps:
            key = bucket(ctx.load.batch)
            mean = sum(steps) / len(steps)
            old = self.accepted.get(key, mean)
            self.accepted[key] = old + EMA_WEIGHT * (mean - old)
