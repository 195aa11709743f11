"""The project's attention function, registered with `transformers.AttentionInterface`.

The HF model classes run unchanged; their attention layers call `paged_attention_forward`, which
writes the new keys and values into the paged cache and attends over it. The per-forward layout of
the ragged batch (slots, block tables, query and sequence lengths) is set by the model runner in a
`ForwardContext` for the duration of one forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from adaspec import kernels
from adaspec.engine.kv_cache import PagedKVCache
from adaspec.kernels.paged_attention_ref import AttentionPlan, attend, plan_attention

ATTENTION_NAME = "adaspec_paged"


@dataclass
class ForwardContext:
    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot of each new token
    block_tables: torch.Tensor  # [batch, max_blocks_per_seq]
    cu_query_lens: torch.Tensor  # [batch + 1]
    seq_lens: torch.Tensor  # [batch] tokens in the cache after this forward
    max_query_len: int
    max_seq_len: int
    plan: AttentionPlan | None = None  # the reference path's gather indices, built by the first layer

    def reference_plan(self) -> AttentionPlan:
        if self.plan is None:
            self.plan = plan_attention(self.block_tables, self.cu_query_lens, self.seq_lens,
                                       self.kv_cache.blocks.block_size, self.max_query_len, self.max_seq_len)
        return self.plan


_current: ForwardContext | None = None


@contextmanager
def forward_context(context: ForwardContext):
    global _current
    _current, previous = context, _current
    try:
        yield
    finally:
        _current = previous


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query: [1, num_heads, num_tokens, head_dim]; key, value: [1, num_kv_heads, num_tokens, head_dim]."""
    ctx = _current
    if ctx is None:
        raise RuntimeError(f"attention '{ATTENTION_NAME}' runs only inside the engine's model runner")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attend_paged(ctx, module.layer_idx, query[0].transpose(0, 1), key[0].transpose(0, 1),
                       value[0].transpose(0, 1), scale)
    return out.unsqueeze(0), None


def attend_paged(ctx: ForwardContext, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """Write this forward's keys and values into layer `layer`'s paged cache and attend over it (the Triton
    kernel on CUDA, the PyTorch reference otherwise). query: [num_tokens, num_heads, head_dim]; key, value:
    [num_tokens, num_kv_heads, head_dim]. Returns [num_tokens, num_heads, head_dim]."""
    key_cache, value_cache = ctx.kv_cache.keys[layer], ctx.kv_cache.values[layer]
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, ctx.slot_mapping, key)
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, ctx.slot_mapping, value)
    if kernels.uses_triton(query):
        return kernels.paged_attention(query.contiguous(), key_cache, value_cache, ctx.block_tables,
                                       ctx.cu_query_lens, ctx.seq_lens, scale, ctx.max_query_len, ctx.max_seq_len)
    return attend(query, key_cache, value_cache, ctx.reference_plan(), scale)


AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
