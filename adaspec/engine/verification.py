"""A step's verification: which drafts each request accepts, and the tokens it emits.

In general `kernels.rejection_sample` (lossless: the output is distributed as p). When every request in the batch
is greedy, `greedy_verify`: the sampler's greedy rule (accept while the draft token is the target's argmax, then
emit the argmax) without the sampler's inputs: one argmax and one copy to the host instead of ~10 small tensors
built and ~20 ops run, which at batch 1 is a visible part of a step. tests/test_greedy_verify.py holds it to the
general sampler.
"""

from __future__ import annotations

import itertools

import torch

from adaspec import kernels
from adaspec.engine.drafter import Drafts
from adaspec.engine.sequence import Sequence
from adaspec.kernels.rng import splitmix64

VERIFY_STREAM = 2  # the verification's random stream from a request's seed (the drafter's is DRAFT_STREAM)


def verify(seqs: list[Sequence], draft_tokens: list[list[int]], drafts: Drafts,
           logits: torch.Tensor) -> tuple[list[int], list[list[int]]]:
    """logits: [sum(k_i + 1), vocab], the target's rows request by request; draft_tokens: [k_i] per request.
    Returns (num_accepted per request, emitted tokens per request: accepted drafts, then one of the target's)."""
    if not seqs:
        return [], []
    params = [s.params for s in seqs]
    if all(p.greedy for p in params):
        return greedy_verify(logits.argmax(dim=-1).tolist(), draft_tokens)
    device = logits.device
    num_accepted, emitted = kernels.rejection_sample(
        target_logits=logits,
        draft_token_ids=torch.tensor([t for d in draft_tokens for t in d], dtype=torch.long, device=device),
        draft_topk_ids=drafts.topk_ids.to(device),
        draft_topk_probs=drafts.topk_probs.to(device),
        cu_num_draft_tokens=torch.tensor(list(itertools.accumulate(map(len, draft_tokens))), device=device),
        temperature=torch.tensor([p.temperature for p in params], device=device),
        top_k=torch.tensor([p.top_k for p in params], device=device),
        top_p=torch.tensor([p.top_p for p in params], device=device),
        is_greedy=torch.tensor([p.greedy for p in params], device=device),
        seeds=torch.tensor([splitmix64(s.seed, len(s.token_ids), VERIFY_STREAM) for s in seqs], device=device),
        max_spec_len=max(map(len, draft_tokens)),
    )
    return num_accepted.tolist(), emitted.tolist()


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
