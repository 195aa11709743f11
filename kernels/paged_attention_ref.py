"""Ragged attention over a paged KV cache — the pure-PyTorch reference.

Request b brings q_b query tokens (cu_query_lens[b] : cu_query_lens[b + 1] of the packed query); they
are the last q_b of its seq_lens[b] tokens, whose keys and values are already in the cache. Each query
attends to every cached position up to its own (causal among the new tokens). Grouped-query
attention: query head h reads key-value head h // (num_heads // num_kv_heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionPlan:
    """Gather indices of one ragged batch; the same for every layer of a forward, so built once.

    Flat indices feed `index_select`, which copies whole rows and is several times faster on CPU than
    advanced indexing with a 2-D index. When every request brings the same number of queries, the
    packed query already is the padded layout and `q_index` / `out_rows` are None.
    """

    batch: int
    num_tokens: int  # query rows the requests hold (a CUDA graph's padded batch has more, which are no request's)
    max_query_len: int
    max_seq_len: int
    q_index: torch.Tensor | None  # [batch * max_query_len] packed row of each padded query
    out_rows: torch.Tensor | None  # [num_tokens] padded row of each packed query
    slots: torch.Tensor  # [batch * max_seq_len] flat cache slot of each key position
    mask: torch.Tensor | None  # [batch, 1, max_query_len, max_seq_len] bool; None when every key is visible


def plan_attention(
    block_tables: torch.Tensor,  # [batch, max_blocks_per_seq] int
    cu_query_lens: torch.Tensor,  # [batch + 1] int
    seq_lens: torch.Tensor,  # [batch] int
    block_size: int,
    max_query_len: int,
    max_seq_len: int,
) -> AttentionPlan:
    batch = seq_lens.shape[0]
    assert cu_query_lens.shape == (batch + 1,) and block_tables.shape[0] == batch
    assert max_seq_len <= block_tables.shape[1] * block_size
    device = seq_lens.device
    num_tokens = int(cu_query_lens[-1])
    query_lens = (cu_query_lens[1:] - cu_query_lens[:-1]).long()  # [batch]
    q_offsets = torch.arange(max_query_len, device=device)  # [max_query_len]
    q_valid = q_offsets[None, :] < query_lens[:, None]  # [batch, max_query_len]
    q_index = out_rows = None
    if num_tokens != batch * max_query_len:
        q_index = (cu_query_lens[:-1, None].long() + q_offsets[None, :]).clamp(max=num_tokens - 1).flatten()
        out_rows = q_valid.flatten().nonzero().squeeze(1)  # [num_tokens]
    kv_pos = torch.arange(max_seq_len, device=device)  # [max_seq_len]
    slots = block_tables[:, kv_pos // block_size].long() * block_size + kv_pos % block_size  # [batch, max_seq_len]
    plan = AttentionPlan(batch, num_tokens, max_query_len, max_seq_len, q_index, out_rows, slots.flatten(), None)
    if batch == 1 and max_query_len == 1 and max_seq_len == int(seq_lens[0]):
        return plan  # one decode token sees every gathered key
    q_pos = seq_lens[:, None].long() - query_lens[:, None] + q_offsets[None, :]  # [batch, max_query_len]
    mask = kv_pos[None, None, :] <= q_pos[:, :, None]  # [batch, max_query_len, max_seq_len]
    mask |= ~q_valid[:, :, None] & (kv_pos == 0)  # padding rows see one key, so they stay finite
    plan.mask = mask[:, None]
    return plan


def attend(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    plan: AttentionPlan,
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    num_heads, num_kv_heads, head_dim = query.shape[1], key_cache.shape[2], key_cache.shape[3]
    assert key_cache.shape == value_cache.shape and num_heads % num_kv_heads == 0
    batch, max_query_len, max_seq_len = plan.batch, plan.max_query_len, plan.max_seq_len
    rows, query = query.shape[0], query[: plan.num_tokens]  # rows past the requests' come back zero
    padded = query if plan.q_index is None else query.index_select(0, plan.q_index)
    q = padded.view(batch, max_query_len, num_heads, head_dim).transpose(1, 2)  # [batch, num_heads, max_q, head_dim]
    k = key_cache.flatten(0, 1).index_select(0, plan.slots).view(batch, max_seq_len, num_kv_heads, head_dim)
    v = value_cache.flatten(0, 1).index_select(0, plan.slots).view(batch, max_seq_len, num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=plan.mask, scale=scale,
        enable_gqa=num_kv_heads != num_heads,
    )  # [batch, num_heads, max_query_len, head_dim]
    out = out.transpose(1, 2).reshape(batch * max_query_len, num_heads, head_dim)
    out = out if plan.out_rows is None else out.index_select(0, plan.out_rows)
    return out if rows == plan.num_tokens else torch.cat([out, out.new_zeros(rows - plan.num_tokens, *out.shape[1:])])


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
    assert query.shape[0] == int(cu_query_lens[-1]) and key_cache.shape[-1] == query.shape[-1]
    plan = plan_attention(block_tables, cu_query_lens, seq_lens, key_cache.shape[1], max_query_len, max_seq_len)
    return attend(query, key_cache, value_cache, plan, scale)
