"""Speculation policies: how many tokens each request may draft at each step.

A policy turns the state of the requests it governs into one `DraftBudget` per request: at most
`max_tokens` draft tokens, and stop early once the draft's probability for its own token falls below
`min_confidence`. The drafter applies the budget token by token. Later policies (threshold, goodput,
adaspec) plug in here with the load and the efficiency model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DraftBudget:
    max_tokens: int
    min_confidence: float = 0.0


class Policy:
    name: str = "policy"
    uses_draft: bool = True

    def budgets(self, seqs: list) -> list[DraftBudget]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class NoSpeculation(Policy):
    """Plain decoding: the target alone, one token per step; the draft model is not run."""

    name = "none"
    uses_draft = False

    def budgets(self, seqs: list) -> list[DraftBudget]:
        return [DraftBudget(0)] * len(seqs)


class FixedLength(Policy):
    """Every request drafts k tokens at every step."""

    def __init__(self, k: int):
        self.k = k
        self.name = f"fixed:{k}"

    def budgets(self, seqs: list) -> list[DraftBudget]:
        return [DraftBudget(self.k)] * len(seqs)


def make_policy(spec: str | Policy, max_spec_len: int) -> Policy:
    """Parse `none` or `fixed:K` (0 <= K <= max_spec_len); a Policy instance passes through."""
    if isinstance(spec, Policy):
        return spec
    name, _, arg = str(spec).partition(":")
    if name == "none" and not arg:
        return NoSpeculation()
    if name == "fixed":
        try:
            k = int(arg)
        except ValueError:
            k = -1
        if not 0 <= k <= max_spec_len:
            raise ValueError(f"policy 'fixed:K' needs an integer K in [0, {max_spec_len}], got {spec!r}")
        return FixedLength(k)
    raise ValueError(f"unknown policy {spec!r}; expected 'none' or 'fixed:K'")
