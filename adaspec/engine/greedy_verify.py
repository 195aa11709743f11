"""Verification when every request in the batch is greedy: the target's argmax, compared on the host.

It is `kernels.rejection_sample`'s greedy rule (accept while the draft token is the target's argmax, then emit
the argmax) without the sampler's inputs: one argmax and one copy to the host instead of ~10 small tensors built
and ~20 ops run, which at batch 1 is a visible part of a step. tests/test_greedy_verify.py holds it to the
general sampler.
"""

from __future__ import annotations


def greedy_verify(target_argmax: list[int], draft_tokens: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """target_argmax: the argmax of each target row, laid out request by request, k_i + 1 rows each (row j < k_i
    scores draft token j, row k_i the bonus position). Returns (num_accepted per request, emitted tokens per
    request: its accepted drafts, then the target's token at the first mismatch or the bonus position)."""
    assert len(target_argmax) == sum(len(draft) + 1 for draft in draft_tokens)
    num_accepted, emitted, row = [], [], 0
    for draft in draft_tokens:
        accepted = 0
        while accepted < len(draft) and draft[accepted] == target_argmax[row + accepted]:
            accepted += 1
        num_accepted.append(accepted)
        emitted.append(draft[:accepted] + [target_argmax[row + accepted]])
        row += len(draft) + 1
    return num_accepted, emitted
