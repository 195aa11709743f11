"""Rejection sampling over a ragged batch of drafts — the pure-PyTorch reference.

Vocabulary, fixed here once:
- draft tokens: the k_i tokens request i's draft proposed this step (k_i may be 0; ragged);
- accepted tokens: the leading draft tokens that pass verification;
- recovered token: at the first rejected position, a token drawn from normalize(max(0, p - q));
- bonus token: when all k_i draft tokens are accepted, one more token drawn from p at the next position.
Each request emits its accepted tokens plus exactly one recovered or bonus token: 1 to k_i + 1 tokens.

p is the target's distribution (after temperature, top-k, top-p), q the draft's: sparse, its top-K
entries (K <= 32), exactly the distribution the draft sampled its token from. A sampled draft token x
is accepted with probability min(1, p(x) / q(x)); greedy requests accept while the draft token is
the target's argmax and emit the argmax at the first mismatch. Either way the output is distributed
exactly as sampling from the target alone (lossless).

Target logits rows are laid out request by request, k_i + 1 rows each: row j < k_i scores draft
token j, row k_i the bonus position. Randomness comes from `adaspec.kernels.rng.uniform(seed, counter)`:
counter j for draft j's acceptance test, RACE_OFFSET + v for vocabulary entry v of the exponential
race that samples the recovered or bonus token (argmax_v w(v) / E_v with E_v ~ Exp(1) samples
from w / sum(w), so max(0, p - q) is never normalised). When p ~ q, fp32 rounding can reject a draft
and yet leave max(0, p - q) zero everywhere (no race score above 0); the recovered token is then
drawn from p, with the same E_v, instead of defaulting to token 0.
"""

from __future__ import annotations

import torch
from adaspec.kernels.rng import uniform
from adaspec.kernels.sampling import processed_probs

PLACEHOLDER_TOKEN_ID = -1
MAX_SPEC_LEN = 63
RACE_OFFSET = MAX_SPEC_LEN + 1


def check_shapes(target_logits, draft_token_ids, draft_topk_ids, draft_topk_probs, cu_num_draft_tokens,
                 per_request: tuple[torch.Tensor, ...], max_spec_len: int) -> tuple[int, int]:
    """The entry asserts both implementations share (no device sync); returns (batch, num_draft_tokens)."""
    batch = cu_num_draft_tokens.shape[0]
    num_draft_tokens = draft_token_ids.shape[0]
    assert target_logits.dim() == 2 and target_logits.shape[0] == num_draft_tokens + batch
    assert draft_topk_ids.dim() == 2 and draft_topk_ids.shape == draft_topk_probs.shape
    assert draft_topk_ids.shape[0] == num_draft_tokens
    assert all(t.shape == (batch,) for t in per_request)  # temperature, top_k, top_p, is_greedy, seeds
    assert 0 <= max_spec_len <= MAX_SPEC_LEN
    return batch, num_draft_tokens


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

    output_token_ids holds, per request, its accepted tokens then the recovered or bonus token;
    the unused slots hold PLACEHOLDER_TOKEN_ID.
    """
    batch, num_draft_tokens = check_shapes(target_logits, draft_token_ids, draft_topk_ids, draft_topk_probs,
                                           cu_num_draft_tokens, (temperature, top_k, top_p, is_greedy, seeds),
                                           max_spec_len)
    device = target_logits.device

    num_draft = torch.diff(cu_num_draft_tokens, prepend=cu_num_draft_tokens.new_zeros(1))  # [batch]
    first_draft = cu_num_draft_tokens - num_draft  # [batch]
    assert batch == 0 or int(num_draft.max()) <= max_spec_len
    arange_b = torch.arange(batch, device=device)
    draft_req = torch.repeat_interleave(arange_b, num_draft, output_size=num_draft_tokens)  # [num_draft_tokens]
    draft_pos = torch.arange(num_draft_tokens, device=device) - first_draft[draft_req]  # [num_draft_tokens]
    draft_row = torch.arange(num_draft_tokens, device=device) + draft_req  # [num_draft_tokens]

    target_argmax = target_logits.argmax(dim=-1)  # [num_draft_tokens + batch]
    final_row = first_draft + arange_b  # [batch] row of draft 0; + num_accepted below
    accepted = draft_token_ids == target_argmax[draft_row]  # [num_draft_tokens] greedy rule
    all_greedy = bool(is_greedy.all())
    if not all_greedy:
        row_req = torch.repeat_interleave(arange_b, num_draft + 1, output_size=num_draft_tokens + batch)
        p = processed_probs(target_logits, temperature[row_req], top_k[row_req], top_p[row_req])  # [rows, vocab]
        p_draft = p[draft_row, draft_token_ids]  # [num_draft_tokens]
        q_draft = (draft_topk_probs.float() * (draft_topk_ids == draft_token_ids[:, None])).sum(dim=-1)
        u = uniform(seeds[draft_req], draft_pos)  # [num_draft_tokens]
        accepted = torch.where(is_greedy[draft_req], accepted, u * q_draft <= p_draft)
    first_rejected = torch.where(accepted, num_draft[draft_req], draft_pos)  # [num_draft_tokens]
    num_accepted = num_draft.clone().scatter_reduce_(0, draft_req, first_rejected, reduce="amin")  # [batch]

    # Emit accepted tokens, then one recovered (rejection) or bonus (all accepted) token.
    output = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.long, device=device)
    keep = draft_pos < num_accepted[draft_req]
    output[draft_req[keep], draft_pos[keep]] = draft_token_ids[keep]
    final_row = final_row + num_accepted  # [batch]
    if all_greedy:
        output[arange_b, num_accepted] = target_argmax[final_row]
        return num_accepted, output
    weights = p[final_row]  # [batch, vocab] race weights: p (bonus) or max(0, p - q) (recovered)
    rejected = num_accepted < num_draft  # [batch]
    if bool(rejected.any()):
        rejected_draft = (first_draft + num_accepted)[rejected]  # [num_rejected]
        q_dense = torch.zeros_like(weights[rejected]).scatter_add_(
            1, draft_topk_ids[rejected_draft], draft_topk_probs[rejected_draft].float()
        )  # [num_rejected, vocab]
        weights[rejected] = (weights[rejected] - q_dense).clamp(min=0)
    vocab_ids = torch.arange(weights.shape[1], device=device) + RACE_OFFSET
    exponential = -torch.log(uniform(seeds[:, None], vocab_ids[None, :]))  # [batch, vocab]
    scores = weights / exponential  # [batch, vocab]
    no_residual = scores.amax(dim=-1) <= 0  # [batch] rounding left nothing of max(0, p - q): race on p
    if bool(no_residual.any()):
        scores[no_residual] = p[final_row[no_residual]] / exponential[no_residual]
    sampled = scores.argmax(dim=-1)  # [batch]
    final_token = torch.where(is_greedy, target_argmax[final_row], sampled)  # [batch]
    output[arange_b, num_accepted] = final_token
    return num_accepted, output
