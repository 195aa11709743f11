"""What a policy hands the drafter for one request and one step, and the rule the drafter applies with it.

A `DraftBudget` caps the drafts (`max_tokens`) and says when to stop before the cap, token by token, from
the live confidences, with no round trip to whoever chose the budget:
  - `min_confidence`: stop once the draft's confidence c in its own token falls below it (the token just
    drafted is still sent; HF assisted generation's threshold);
  - `min_accept_prob`: draft the next token only while it is expected to clear this: P_j·a_j, with
    P_j = a_1·…·a_j and each a from `curve` (calibrated acceptance; the last one stands in for the next,
    since confidence runs in streaks);
  - `batch_rule`: the reference system's batch-uniform rule, applied by the drafter over every row of its
    batch that carries it (`BatchGoodputRule`).

Losslessness: whether draft j is verified may depend on drafts 1..j−1, never on draft j itself. Dropping a
sampled draft because of its own confidence would verify a draft that is no longer distributed as q (only
its confident outcomes survive) and bias the output. So a drafted token is always sent; the rule decides
only whether to draft the next one. Greedy output does not depend on q, so the batch rule may drop a greedy
row's last depth, as the reference system does (it is greedy-only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.speculation.acceptance import AcceptanceCurve


@dataclass(frozen=True)
class BatchGoodputRule:
    """The AdaSpec paper's rule: depth j of the batch is drafted for every row, and kept while the batch's
    predicted goodput G(j) = (B + Σ_i Σ_{m≤j} P_im) / T(j) grows, with P from the raw confidences and
    T(j) = base_ms + [j > 0]·hop_ms + j·draft_ms + B·(j + 1)·token_ms (B rows)."""

    base_ms: float  # the step without drafts, less its B tokens' verification
    draft_ms: float  # one draft forward of the batch
    token_ms: float  # verifying one more token
    hop_ms: float = 0.0  # what drafting at all costs besides the forwards (a draft replica's round trip)


@dataclass(frozen=True)
class DraftBudget:
    max_tokens: int
    min_confidence: float = 0.0
    min_accept_prob: float = 0.0
    curve: AcceptanceCurve | None = None  # needed with min_accept_prob
    batch_rule: BatchGoodputRule | None = None

    def __post_init__(self):
        assert self.max_tokens >= 0, self.max_tokens
        assert self.min_accept_prob == 0.0 or self.curve is not None, "min_accept_prob needs an acceptance curve"

    def capped(self, k: int) -> DraftBudget:
        """The same rule with at most `k` drafts."""
        return self if k >= self.max_tokens else DraftBudget(max(0, k), self.min_confidence, self.min_accept_prob,
                                                            self.curve, self.batch_rule)


NO_DRAFTS = DraftBudget(0)


class DraftStop:
    """The per-request stop rule, fed each drafted token's confidence (`add`); `going` says whether to draft on."""

    def __init__(self, budget: DraftBudget):
        self.budget = budget
        self.accept_prob = 1.0  # P_j of the drafts so far
        self.drafted = 0
        self.going = budget.max_tokens > 0

    def add(self, confidence: float) -> None:
        b = self.budget
        self.drafted += 1
        if self.drafted >= b.max_tokens or confidence < b.min_confidence:
            self.going = False
        if b.min_accept_prob > 0.0:
            a = b.curve(confidence)
            self.accept_prob *= a
            if self.accept_prob * a < b.min_accept_prob:
                self.going = False


def batch_rule_keeps(rule: BatchGoodputRule, kept_sums: Sequence[float], rows: int) -> bool:
    """Whether the batch rule keeps its newest depth: `kept_sums[j]` is Σ_i P_i(j+1) (raw confidences) over the
    rows, depth by depth; the newest depth stays if G(len) > G(len − 1)."""
    depth = len(kept_sums)

    def goodput(j: int) -> float:
        step = rule.base_ms + (rule.hop_ms if j else 0.0) + j * rule.draft_ms + rows * (j + 1) * rule.token_ms
        return (rows + sum(kept_sums[:j])) / step

    return goodput(depth) > goodput(depth - 1)
