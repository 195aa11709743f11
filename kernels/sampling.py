"""Turn raw logits into the distribution a request samples from: temperature, then top-k, then top-p.

The same function makes p (target) in verification and q (draft) in drafting, so both sides of the
rejection test see the same transformation. Each row depends on its own logits and parameters only,
never on the other rows of the batch.

Both filters are thresholds on the scaled logit s, so ties are always kept together:
- top-k keeps every token whose s is >= the k-th largest s (counted with multiplicity). Ties with
  the k-th logit are all kept, so more than k tokens may survive; the kept set does not depend on
  token ids or on the order of the vocabulary (`torch.topk`'s own tie order never matters).
- top-p then keeps every token whose s is >= s*, the smallest s for which the mass of the tokens with
  a strictly larger s is < top_p: mass after top-k (ties with the k-th logit included), normalised
  over what top-k kept. So ties with the last kept token are kept too, and with top_p <= 0 the top
  logit (and its ties) remains. Rows with top_p >= 1 (compared as fp32) skip top-p entirely.
`adaspec.kernels.sampling_triton` implements the same rule without sorting.
"""

from __future__ import annotations

import torch


def processed_probs(
    logits: torch.Tensor,  # [num_rows, vocab]
    temperature: torch.Tensor,  # [num_rows] float; rows with 0 (greedy) are left at temperature 1
    top_k: torch.Tensor,  # [num_rows] int64; 0 = off
    top_p: torch.Tensor,  # [num_rows] float; 1 = off
) -> torch.Tensor:  # [num_rows, vocab] float32
    assert logits.dim() == 2 and temperature.shape == top_k.shape == top_p.shape == logits.shape[:1]
    temperature = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    scaled = logits.float() / temperature.float()[:, None]  # [num_rows, vocab]
    top_p = top_p.float()  # [num_rows] compared in fp32, as the Triton kernel does
    needs_k, needs_p = bool((top_k > 0).any()), bool((top_p < 1).any())
    if needs_k or needs_p:
        scaled = _mask_top_k_top_p(scaled, top_k, top_p, needs_p)
    return scaled.softmax(dim=-1)


def _mask_top_k_top_p(
    logits: torch.Tensor,  # [num_rows, vocab] float32
    top_k: torch.Tensor,  # [num_rows]
    top_p: torch.Tensor,  # [num_rows] float32
    needs_p: bool,
) -> torch.Tensor:  # [num_rows, vocab] float32, filtered tokens at -inf
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))  # [num_rows]
    if not needs_p:  # top-k alone needs only the k largest, not a sort of the vocabulary
        k_max = int(k[top_k > 0].max())
        top = logits.topk(k_max, dim=-1).values  # [num_rows, k_max]
        keep_min = top.gather(1, (k.clamp(max=k_max) - 1)[:, None])  # [num_rows, 1]
        keep_min = keep_min.masked_fill(top_k[:, None] == 0, float("-inf"))
        return logits.masked_fill(logits < keep_min, float("-inf"))
    sorted_logits, _ = logits.sort(dim=-1, descending=True)  # [num_rows, vocab]
    keep_min = sorted_logits.gather(1, (k - 1)[:, None])  # [num_rows, 1] the k-th largest logit
    # Probabilities after top-k (ties with the k-th logit kept), in sorted order; a token is kept
    # while the mass before it is < top_p.
    sorted_logits = sorted_logits.masked_fill(sorted_logits < keep_min, float("-inf"))
    sorted_probs = sorted_logits.softmax(dim=-1)  # [num_rows, vocab]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [num_rows, vocab]
    last_kept = ((mass_before < top_p[:, None]).sum(dim=-1) - 1).clamp(min=0)  # [num_rows]
    top_p_min = sorted_logits.gather(1, last_kept[:, None])  # [num_rows, 1]
    # Only rows with top_p < 1: in fp32 the cumulative mass can reach 1 before the tail ends.
    keep_min = torch.where(top_p[:, None] < 1, torch.maximum(keep_min, top_p_min), keep_min)
    return logits.masked_fill(logits < keep_min, float("-inf"))
