"""The rules everyone has: no speculation, and the same k for every request at every step."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext


class NoSpeculation(Policy):
    """Plain decoding: the target alone, one token per step; the draft model is not run."""

    name = "none"
    uses_draft = False

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        return [NO_DRAFTS] * len(requests)


class FixedLength(Policy):
    """Every request drafts k tokens at every step."""

    def __init__(self, k: int):
        self.k, self.name = k, f"fixed:{k}"
        self._budget = DraftBudget(k)

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        return [self._budget] * len(requests)
