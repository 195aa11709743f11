"""What every policy is: a function from the step's plain state to one `DraftBudget` per request.

Policies are called with the requests they govern, together (a batch-level rule sees its whole batch),
and told afterwards what each request drafted and got accepted, for the ones that learn.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.step_state import RequestState, StepContext


class Policy:
    name: str = "policy"
    uses_draft: bool = True  # False: the draft model is never run for these requests
    needs_profile: bool = False  # True: it reads the latency models (the step context's verify and draft)

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        raise NotImplementedError

    def observe(self, requests: Sequence[RequestState], ctx: StepContext, drafted: Sequence[int],
                accepted: Sequence[int]) -> None:
        """After verification: how many drafts each request sent and how many were accepted."""

    def __repr__(self) -> str:
        return self.name
