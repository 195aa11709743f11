"""Rejection sampling over a ragged batch of drafts — Triton kernels, same contract as the reference.

Vocabulary (as in `adaspec.kernels.rejection_sampler_ref`): draft tokens are the k_i tokens request i's draft
proposed; accepted tokens the leading draft tokens that pass verification; the recovered token is
drawn from normalize(max(0, p - q)) at the first rejected position; the bonus token is drawn from p
when all k_i draft tokens are accepted. p is the target distribution (temperature, top-k, top-p), q
the draft's sparse top-K distribution. Greedy requests accept while the draft token is the argmax of
the raw target logits and emit that argmax at the first mismatch.

Three or four launches, each over greedy and sampled requests alike:
1. `sampling_triton.target_row_stats_kernel`, one program per target row: the argmax (greedy rows),
   or what p(v) needs besides the logit (sampled rows: max, 1 / sum, top-k / top-p threshold).
2. `_verify_kernel`, one program per request: the acceptance test of every draft position at once
   (p(x) from one logit and the row stats, q(x) from the top-K list), num_accepted, the accepted
   tokens, and the greedy requests' final token.
3. `_race_kernel`, (request, vocabulary split) programs: the exponential race argmax_v w(v) / E_v
   over the final row, w = max(0, p - q) (recovered) or p (bonus): one more read of that row; never
   normalised, so no extra pass. Alongside, the race on p with the same E_v, the reference's fallback
   when rounding leaves no positive max(0, p - q).
4. `_race_pick_kernel`, one program per request, only when the vocabulary is split: the best split
   wins (ties: lowest token id, as torch.argmax) and its token is written after the accepted ones.
Random numbers are `adaspec.kernels.rng.uniform(seed, counter)`, bit for bit (`rng_triton`), so on the same
inputs the outputs equal the reference's up to fp32 rounding of p (a decision flips only when u*q(x)
and p(x), or two race scores, agree to ~1e-7 relative).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from adaspec.kernels.rejection_sampler_ref import PLACEHOLDER_TOKEN_ID, RACE_OFFSET, check_shapes
from adaspec.kernels.rng_triton import seed_key, uniform_from_key
from adaspec.kernels.sampling_triton import (
    request_span,
    row_temperature,
    running_argmax,
    scaled_logits,
    target_prob,
    target_row_stats_kernel,
)

STATS_BLOCK = 1024  # vocabulary tile of the one-pass row statistics
SEARCH_BLOCK = 256  # vocabulary tile of the threshold search ([tile, 16] temporaries)
RACE_BLOCK = 256  # vocabulary tile of the race ([tile, K] temporaries for q)
RACE_PROGRAMS = 1024  # aim for this many race programs in total, to fill the GPU at small batch
if os.environ.get("TRITON_INTERPRET") == "1":
    # The CPU interpreter pays per operation and per program, not per element: wider tiles and fewer
    # race programs, same code paths (test vocabularies still span several tiles and splits).
    STATS_BLOCK = SEARCH_BLOCK = 8192
    RACE_BLOCK = 2048
    RACE_PROGRAMS = 8
_PLACEHOLDER = tl.constexpr(PLACEHOLDER_TOKEN_ID)
_RACE_OFFSET = tl.constexpr(RACE_OFFSET)


@triton.jit
def _verify_kernel(
    target_logits_ptr,  # [num_draft_tokens + batch, vocab]
    draft_token_ids_ptr,  # [num_draft_tokens] int64
    draft_topk_ids_ptr,  # [num_draft_tokens, K] int64
    draft_topk_probs_ptr,  # [num_draft_tokens, K] float
    cu_num_draft_ptr,  # [batch] int64, inclusive cumulative k_i
    temperature_ptr,  # [batch] float
    is_greedy_ptr,  # [batch] bool
    seeds_ptr,  # [batch] int64
    row_argmax_ptr,  # [num_draft_tokens + batch] int64
    row_max_ptr,  # [num_draft_tokens + batch] fp32
    row_inv_sum_ptr,  # [num_draft_tokens + batch] fp32
    row_threshold_ptr,  # [num_draft_tokens + batch] int32
    num_accepted_ptr,  # [batch] int64 out
    output_ptr,  # [batch, max_spec_len + 1] int64 out
    logits_row_stride,
    topk,
    output_width,
    SPEC_BLOCK: tl.constexpr,
    TOPK_BLOCK: tl.constexpr,
):
    req = tl.program_id(0)
    start, num_draft = request_span(cu_num_draft_ptr, req)
    first_row = start + req
    position = tl.arange(0, SPEC_BLOCK)  # [SPEC_BLOCK] draft positions 0..k_i-1 (masked beyond)
    is_draft = position < num_draft
    draft = tl.load(draft_token_ids_ptr + start + position, mask=is_draft, other=0)  # [SPEC_BLOCK]
    rows = first_row + position  # [SPEC_BLOCK]
    greedy = tl.load(is_greedy_ptr + req) != 0
    if greedy:
        accepted = draft == tl.load(row_argmax_ptr + rows, mask=is_draft, other=-1)
    else:
        temperature = row_temperature(temperature_ptr, req)
        logit = tl.load(target_logits_ptr + rows.to(tl.int64) * logits_row_stride + draft, mask=is_draft,
                        other=-float("inf")).to(tl.float32)
        p = target_prob(
            tl.math.div_rn(logit, temperature),
            tl.load(row_max_ptr + rows, mask=is_draft, other=0.0),
            tl.load(row_inv_sum_ptr + rows, mask=is_draft, other=0.0),
            tl.load(row_threshold_ptr + rows, mask=is_draft, other=0),
        )  # [SPEC_BLOCK] p(draft token)
        slot = tl.arange(0, TOPK_BLOCK)  # [TOPK_BLOCK]
        topk_offs = (start + position)[:, None] * topk + slot[None, :]  # [SPEC_BLOCK, TOPK_BLOCK]
        topk_mask = is_draft[:, None] & (slot[None, :] < topk)
        topk_ids = tl.load(draft_topk_ids_ptr + topk_offs, mask=topk_mask, other=-1)
        topk_probs = tl.load(draft_topk_probs_ptr + topk_offs, mask=topk_mask, other=0.0).to(tl.float32)
        q = tl.sum(tl.where(topk_ids == draft[:, None], topk_probs, 0.0), axis=1)  # [SPEC_BLOCK] q(draft token)
        u = uniform_from_key(seed_key(tl.load(seeds_ptr + req)), position)  # counter j: draft j's test
        accepted = u * q <= p  # accept with probability min(1, p / q)
    num_accepted = tl.min(tl.where(is_draft & ~accepted, position, num_draft), axis=0)
    out = tl.where(position < num_accepted, draft, _PLACEHOLDER)
    if greedy:
        out = tl.where(position == num_accepted, tl.load(row_argmax_ptr + first_row + num_accepted), out)
    tl.store(output_ptr + req * output_width + position, out, mask=position < output_width)
    tl.store(num_accepted_ptr + req, num_accepted)


@triton.jit
def _race_kernel(
    target_logits_ptr,  # [num_draft_tokens + batch, vocab]
    draft_topk_ids_ptr,  # [num_draft_tokens, K] int64
    draft_topk_probs_ptr,  # [num_draft_tokens, K] float
    cu_num_draft_ptr,  # [batch] int64, inclusive cumulative k_i
    temperature_ptr,  # [batch] float
    is_greedy_ptr,  # [batch] bool
    seeds_ptr,  # [batch] int64
    row_max_ptr,  # [num_draft_tokens + batch] fp32
    row_inv_sum_ptr,  # [num_draft_tokens + batch] fp32
    row_threshold_ptr,  # [num_draft_tokens + batch] int32
    num_accepted_ptr,  # [batch] int64
    race_scores_ptr,  # [batch, num_splits, 2] fp32 out: best score of the split, (w race, p race)
    race_tokens_ptr,  # [batch, num_splits, 2] int32 out: its token
    output_ptr,  # [batch, max_spec_len + 1] int64 out, written here when num_splits == 1
    vocab,
    logits_row_stride,
    topk,
    split_size,
    num_splits,
    output_width,
    BLOCK: tl.constexpr,
    TOPK_BLOCK: tl.constexpr,
):
    req = tl.program_id(0)
    split = tl.program_id(1)
    if tl.load(is_greedy_ptr + req) != 0:
        return
    start, num_draft = request_span(cu_num_draft_ptr, req)
    num_accepted = tl.load(num_accepted_ptr + req)
    final_row = start + req + num_accepted
    row_ptr = target_logits_ptr + final_row.to(tl.int64) * logits_row_stride
    temperature = row_temperature(temperature_ptr, req)
    row_max = tl.load(row_max_ptr + final_row)
    inv_sum = tl.load(row_inv_sum_ptr + final_row)
    threshold = tl.load(row_threshold_ptr + final_row)
    key = seed_key(tl.load(seeds_ptr + req))
    # q of the rejected draft position, as a top-K list; empty for the bonus token (w = p).
    slot = tl.arange(0, TOPK_BLOCK)  # [TOPK_BLOCK]
    # (one compare instead of `& scalar`: the interpreter mis-types a tensor & scalar mask)
    slot_mask = slot < tl.where(num_accepted < num_draft, topk, 0)
    rejected_offs = (start + num_accepted) * topk + slot
    q_ids = tl.load(draft_topk_ids_ptr + rejected_offs, mask=slot_mask, other=-1)  # [TOPK_BLOCK]
    q_probs = tl.load(draft_topk_probs_ptr + rejected_offs, mask=slot_mask, other=0.0).to(tl.float32)
    begin = split * split_size
    end = tl.minimum(begin + split_size, vocab)
    best_w, best_w_token = -1.0, begin  # scores are >= 0; -1 marks padding
    best_p, best_p_token = -1.0, begin
    for tile in range(begin, end, BLOCK):
        offs = tile + tl.arange(0, BLOCK)  # [BLOCK]
        p = target_prob(scaled_logits(row_ptr, offs, end, temperature), row_max, inv_sum, threshold)  # [BLOCK]
        q = tl.sum(tl.where(offs[:, None] == q_ids[None, :], q_probs[None, :], 0.0), axis=1)  # [BLOCK]
        exponential = -tl.log(uniform_from_key(key, offs + _RACE_OFFSET))  # [BLOCK] Exp(1) per token
        in_split = offs < end
        w_score = tl.where(in_split, tl.maximum(p - q, 0.0) / exponential, -1.0)  # [BLOCK]
        p_score = tl.where(in_split, p / exponential, -1.0)  # [BLOCK]
        best_w, best_w_token = running_argmax(w_score, tile, best_w, best_w_token)
        best_p, best_p_token = running_argmax(p_score, tile, best_p, best_p_token)
    if num_splits == 1:  # the only split holds the winner: skip `_race_pick_kernel`
        token = tl.where(best_w > 0, best_w_token, best_p_token)
        tl.store(output_ptr + req * output_width + num_accepted, token.to(tl.int64))
    else:
        offs = (req * num_splits + split) * 2
        tl.store(race_scores_ptr + offs, best_w)
        tl.store(race_scores_ptr + offs + 1, best_p)
        tl.store(race_tokens_ptr + offs, best_w_token)
        tl.store(race_tokens_ptr + offs + 1, best_p_token)


@triton.jit
def _race_pick_kernel(
    is_greedy_ptr,  # [batch] bool
    num_accepted_ptr,  # [batch] int64
    race_scores_ptr,  # [batch, num_splits, 2] fp32
    race_tokens_ptr,  # [batch, num_splits, 2] int32
    output_ptr,  # [batch, max_spec_len + 1] int64 out
    num_splits,
    output_width,
    SPLIT_BLOCK: tl.constexpr,
):
    req = tl.program_id(0)
    if tl.load(is_greedy_ptr + req) != 0:
        return
    split = tl.arange(0, SPLIT_BLOCK)  # [SPLIT_BLOCK]
    offs = (req * num_splits + split) * 2  # [SPLIT_BLOCK]
    w_scores = tl.load(race_scores_ptr + offs, mask=split < num_splits, other=-1.0)  # [SPLIT_BLOCK]
    p_scores = tl.load(race_scores_ptr + offs + 1, mask=split < num_splits, other=-1.0)  # [SPLIT_BLOCK]
    best_w, w_winner = tl.max(w_scores, axis=0, return_indices=True, return_indices_tie_break_left=True)
    _, p_winner = tl.max(p_scores, axis=0, return_indices=True, return_indices_tie_break_left=True)
    # No positive max(0, p - q) anywhere: the p race decides, as in the reference.
    winner = tl.where(best_w > 0, w_winner * 2, p_winner * 2 + 1)
    token = tl.load(race_tokens_ptr + req * num_splits * 2 + winner)
    tl.store(output_ptr + req * output_width + tl.load(num_accepted_ptr + req), token.to(tl.int64))


def rejection_sample(
    target_logits: torch.Tensor,  # [num_draft_tokens + batch, vocab]
    draft_token_ids: torch.Tensor,  # [num_draft_tokens] int64
    draft_topk_ids: torch.Tensor,  # [num_draft_tokens, K] int64, sparse q's support
    draft_topk_probs: torch.Tensor,  # [num_draft_tokens, K] float, sparse q
    cu_num_draft_tokens: torch.Tensor,  # [batch] int64, inclusive cumulative k_i
    temperature: torch.Tensor,  # [batch] float
    top_k: torch.Tensor,  # [batch] int64, 0 = off
    top_p: torch.Tensor,  # [batch] float, 1 = off
    is_greedy: torch.Tensor,  # [batch] bool
    seeds: torch.Tensor,  # [batch] int64, this step's seed per request
    max_spec_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (num_accepted [batch] int64, output_token_ids [batch, max_spec_len + 1] int64).

    Same contract as `adaspec.kernels.rejection_sampler_ref.rejection_sample`; k_i <= max_spec_len is trusted
    (checking it would need a device-to-host sync).
    """
    batch, num_draft_tokens = check_shapes(target_logits, draft_token_ids, draft_topk_ids, draft_topk_probs,
                                           cu_num_draft_tokens, (temperature, top_k, top_p, is_greedy, seeds),
                                           max_spec_len)
    num_rows, vocab = target_logits.shape
    topk = draft_topk_ids.shape[1]
    device = target_logits.device
    assert 0 < vocab < 2**31 - RACE_OFFSET
    tensors = (draft_token_ids, draft_topk_ids, draft_topk_probs, cu_num_draft_tokens, temperature, top_k,
               top_p, is_greedy, seeds)
    assert all(t.device == device for t in tensors), "all inputs on the logits' device"
    num_accepted = torch.empty(batch, dtype=torch.long, device=device)  # [batch]
    output = torch.empty(batch, max_spec_len + 1, dtype=torch.long, device=device)  # [batch, max_spec_len + 1]
    if batch == 0:
        return num_accepted, output
    if target_logits.stride(1) != 1:
        target_logits = target_logits.contiguous()
    draft_token_ids, draft_topk_ids, cu_num_draft_tokens, top_k, seeds = (
        t.long().contiguous() for t in (draft_token_ids, draft_topk_ids, cu_num_draft_tokens, top_k, seeds))
    draft_topk_probs, temperature, top_p, is_greedy = (
        t.contiguous() for t in (draft_topk_probs, temperature, top_p, is_greedy))
    row_argmax = torch.empty(num_rows, dtype=torch.long, device=device)  # [num_rows]
    row_max = torch.empty(num_rows, dtype=torch.float32, device=device)  # [num_rows]
    row_inv_sum = torch.empty(num_rows, dtype=torch.float32, device=device)  # [num_rows]
    row_threshold = torch.empty(num_rows, dtype=torch.int32, device=device)  # [num_rows]
    stride = target_logits.stride(0)
    topk_block = triton.next_power_of_2(max(topk, 1))

    target_row_stats_kernel[(batch, max_spec_len + 1)](
        target_logits, cu_num_draft_tokens, temperature, top_k, top_p, is_greedy,
        row_argmax, row_max, row_inv_sum, row_threshold, vocab, stride,
        BLOCK=STATS_BLOCK, SEARCH_BLOCK=SEARCH_BLOCK,
    )
    _verify_kernel[(batch,)](
        target_logits, draft_token_ids, draft_topk_ids, draft_topk_probs, cu_num_draft_tokens, temperature,
        is_greedy, seeds, row_argmax, row_max, row_inv_sum, row_threshold, num_accepted, output,
        stride, topk, max_spec_len + 1,
        SPEC_BLOCK=triton.next_power_of_2(max_spec_len + 1), TOPK_BLOCK=topk_block,
    )
    num_tiles = triton.cdiv(vocab, RACE_BLOCK)
    tiles_per_split = triton.cdiv(num_tiles, max(1, min(num_tiles, RACE_PROGRAMS // batch)))
    num_splits = triton.cdiv(num_tiles, tiles_per_split)
    race_scores = torch.empty(batch, num_splits, 2, dtype=torch.float32, device=device)  # [batch, num_splits, 2]
    race_tokens = torch.empty(batch, num_splits, 2, dtype=torch.int32, device=device)  # [batch, num_splits, 2]
    _race_kernel[(batch, num_splits)](
        target_logits, draft_topk_ids, draft_topk_probs, cu_num_draft_tokens, temperature, is_greedy, seeds,
        row_max, row_inv_sum, row_threshold, num_accepted, race_scores, race_tokens, output,
        vocab, stride, topk, tiles_per_split * RACE_BLOCK, num_splits, max_spec_len + 1,
        BLOCK=RACE_BLOCK, TOPK_BLOCK=topk_block, num_warps=8,  # [256, 32] q temporaries
    )
    if num_splits > 1:
        _race_pick_kernel[(batch,)](
            is_greedy, num_accepted, race_scores, race_tokens, output, num_splits, max_spec_len + 1,
            SPLIT_BLOCK=triton.next_power_of_2(num_splits),
        )
    return num_accepted, output
