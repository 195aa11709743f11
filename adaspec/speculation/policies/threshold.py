"""HF assisted generation's confidence threshold: draft until the draft's confidence in its token falls below C."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext


class ConfidenceThreshold(Policy):
    def __init__(self, threshold: float):
        self.threshold, self.name = threshold, f"threshold:{threshold:g}"

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        return [DraftBudget(ctx.max_spec_len, min_confidence=self.threshold)] * len(requests)
