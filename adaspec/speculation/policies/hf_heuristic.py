"""HF assisted generation's `num_assistant_tokens_schedule="heuristic"`, per request: k += 2 after a step
whose drafts were all accepted, k −= 1 (never below 1) otherwise, from HF's default start of 20 tokens.
k is kept within max_spec_len (HF lets it grow past what any step can use)."""

from __future__ import annotations

from collections.abc import Sequence

from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.step_state import RequestState, StepContext

HF_START = 20  # transformers' GenerationConfig.num_assistant_tokens


class HfHeuristic(Policy):
    name = "hf-heuristic"

    def budgets(self, requests: Sequence[RequestState], ctx: StepContext) -> list[DraftBudget]:
        return [DraftBudget(r.memo.setdefault("hf_k", min(HF_START, ctx.max_spec_len))) for r in requests]

    def observe(self, requests: Sequence[RequestState], ctx: StepContext, drafted: Sequence[int],
                accepted: Sequence[int]) -> None:
        for r, d, a in zip(requests, drafted, accepted):
            if d:
                k = r.memo.get("hf_k", min(HF_START, ctx.max_spec_len))
                r.memo["hf_k"] = min(ctx.max_spec_len, k + 2) if a == d else max(1, k - 1)
