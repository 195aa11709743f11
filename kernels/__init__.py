"""Batched verification kernels. Each has a pure-PyTorch reference with the same signature.

`rejection_sample` and `paged_attention` dispatch: CUDA tensors use the Triton kernels when Triton
imports, CPU tensors the PyTorch references; ADASPEC_FORCE_TRITON=1 forces the Triton path (with
TRITON_INTERPRET=1 set before the first call it runs on the CPU, for tests). The Triton modules are
imported on first use, so Triton stays optional and CPU-only runs never pay for importing it.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch
from adaspec.kernels import paged_attention_ref, rejection_sampler_ref
from adaspec.kernels.rejection_sampler_ref import PLACEHOLDER_TOKEN_ID

FORCE_TRITON_ENV = "ADASPEC_FORCE_TRITON"
_triton_modules: tuple[ModuleType, ModuleType] | None = None
_triton_error: ImportError | None = None


def _triton_kernels() -> tuple[ModuleType, ModuleType] | None:
    """(paged_attention_triton, rejection_sampler_triton), or None when Triton cannot be imported."""
    global _triton_modules, _triton_error
    if _triton_modules is None and _triton_error is None:
        try:
            from adaspec.kernels import paged_attention_triton, rejection_sampler_triton
        except ImportError as error:
            _triton_error = error
        else:
            _triton_modules = (paged_attention_triton, rejection_sampler_triton)
    return _triton_modules


def uses_triton(tensor: torch.Tensor) -> bool:
    """Whether kernels called on `tensor` take the Triton path."""
    if os.environ.get(FORCE_TRITON_ENV) == "1":
        if _triton_kernels() is None:
            raise RuntimeError(f"{FORCE_TRITON_ENV}=1 but Triton does not import: {_triton_error}")
        return True
    return tensor.is_cuda and _triton_kernels() is not None


def rejection_sample(
    target_logits: torch.Tensor,  # [num_draft_tokens + batch, vocab]
    draft_token_ids: torch.Tensor,  # [num_draft_tokens] int64
    draft_topk_ids: torch.Tensor,  # [num_draft_tokens, K] int64
    draft_topk_probs: torch.Tensor,  # [num_draft_tokens, K] float
    cu_num_draft_tokens: torch.Tensor,  # [batch] int64, inclusive cumulative k_i
    temperature: torch.Tensor,  # [batch] float
    top_k: torch.Tensor,  # [batch] int64
    top_p: torch.Tensor,  # [batch] float
    is_greedy: torch.Tensor,  # [batch] bool
    seeds: torch.Tensor,  # [batch] int64
    max_spec_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `adaspec.kernels.rejection_sampler_ref.rejection_sample`."""
    impl = _triton_kernels()[1] if uses_triton(target_logits) else rejection_sampler_ref
    return impl.rejection_sample(
        target_logits, draft_token_ids, draft_topk_ids, draft_topk_probs, cu_num_draft_tokens,
        temperature, top_k, top_p, is_greedy, seeds, max_spec_len,
    )


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [batch, max_blocks_per_seq] int
    cu_query_lens: torch.Tensor,  # [batch + 1] int
    seq_lens: torch.Tensor,  # [batch] int
    scale: float,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """See `adaspec.kernels.paged_attention_ref.paged_attention`."""
    impl = _triton_kernels()[0] if uses_triton(query) else paged_attention_ref
    return impl.paged_attention(
        query, key_cache, value_cache, block_tables, cu_query_lens, seq_lens, scale, max_query_len, max_seq_len
    )


__all__ = ["PLACEHOLDER_TOKEN_ID", "paged_attention", "rejection_sample", "uses_triton"]
