"""Ragged attention over a paged KV cache — the Triton kernel, same contract as the reference.

Request b brings q_b query tokens (rows cu_query_lens[b] : cu_query_lens[b + 1] of the packed query),
the last q_b of its seq_lens[b] tokens; every key and value is already in the cache, found through
the request's block table. Each query attends to the cached positions up to its own (causal among the
new tokens). Grouped-query attention: query head h reads key-value head h // (num_heads // num_kv_heads).

One program per (request, key-value head, tile of BLOCK_Q query tokens). The program stacks the tile's
tokens times the group's query heads into one [BLOCK_Q * GROUP_BLOCK, head_dim] matrix, so each key
and value tile read from the cache serves the whole group, and loops over the key positions the tile
can see in BLOCK_N steps with an online softmax (flash attention): running max m, running sum l, and
the accumulator rescaled by exp(m_old - m_new). Block-table lookups are per position, so any
block_size works and a key tile may span pages.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # key positions per inner step (32 for fp32 caches, whose tiles take twice the shared memory)
TARGET_ROWS = 128  # query rows (tokens x group heads) per program: k + 1 <= 16 tokens of a group of 8
MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _paged_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,  # [batch, max_blocks_per_seq] int
    cu_query_lens_ptr,  # [batch + 1] int
    seq_lens_ptr,  # [batch] int
    out_ptr,  # [num_tokens, num_heads, head_dim] out
    scale,
    stride_qt, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ot, stride_oh, stride_od,
    stride_table,
    block_size,
    group_size,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_BLOCK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    q_tile = tl.program_id(2)
    q_start = tl.load(cu_query_lens_ptr + req)
    q_len = tl.load(cu_query_lens_ptr + req + 1) - q_start
    if q_tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)

    rows = tl.arange(0, BLOCK_Q * GROUP_BLOCK)  # [M] row = token-in-tile * GROUP_BLOCK + head-in-group
    token = q_tile * BLOCK_Q + rows // GROUP_BLOCK  # [M] token index inside the request
    head = kv_head * group_size + rows % GROUP_BLOCK  # [M] query head
    row_valid = (token < q_len) & (rows % GROUP_BLOCK < group_size)  # [M]
    dim = tl.arange(0, HEAD_BLOCK)  # [HEAD_BLOCK]
    # Mask the head dimension only when it is padded: a mask that varies along it would stop the
    # compiler from vectorising the contiguous loads (and cost a 64-bit pointer per element).
    if HEAD_BLOCK == HEAD_DIM:
        dim_valid = tl.full([1, HEAD_BLOCK], 1, tl.int1)  # [1, HEAD_BLOCK]
    else:
        dim_valid = (dim < HEAD_DIM)[None, :]  # [1, HEAD_BLOCK]
    q_offs = (q_start + token).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + dim[None, :] * stride_qd
    q = tl.load(query_ptr + q_offs, mask=row_valid[:, None] & dim_valid, other=0.0)  # [M, HEAD_BLOCK]
    q_pos = seq_len - q_len + token  # [M] absolute position of each query row

    # The tile's last token sees the most keys; nothing beyond it is read.
    kv_end = tl.minimum(seq_len, seq_len - q_len + (q_tile + 1) * BLOCK_Q)
    row_max = tl.full([BLOCK_Q * GROUP_BLOCK], -float("inf"), tl.float32)  # [M]
    row_sum = tl.zeros([BLOCK_Q * GROUP_BLOCK], tl.float32)  # [M]
    acc = tl.zeros([BLOCK_Q * GROUP_BLOCK, HEAD_BLOCK], tl.float32)  # [M, HEAD_BLOCK]
    for kv_tile in range(0, kv_end, BLOCK_N):
        pos = kv_tile + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions
        pos_valid = pos < kv_end
        page = tl.load(block_tables_ptr + req * stride_table + pos // block_size, mask=pos_valid, other=0)
        page = page.to(tl.int64)  # [BLOCK_N]
        in_page = pos % block_size  # [BLOCK_N]
        kv_mask = pos_valid[:, None] & dim_valid
        k_offs = (page[:, None] * stride_kb + in_page[:, None] * stride_ks + kv_head * stride_kh
                  + dim[None, :] * stride_kd)
        v_offs = (page[:, None] * stride_vb + in_page[:, None] * stride_vs + kv_head * stride_vh
                  + dim[None, :] * stride_vd)
        k = tl.load(key_cache_ptr + k_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, HEAD_BLOCK]
        v = tl.load(value_cache_ptr + v_offs, mask=kv_mask, other=0.0)  # [BLOCK_N, HEAD_BLOCK]

        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [M, BLOCK_N]
        visible = pos_valid[None, :] & (pos[None, :] <= q_pos[:, None])  # causal
        scores = tl.where(visible, scores, -float("inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))  # [M]
        # A row that has seen no key yet stays at -inf; shift by 0 there so exp never sees inf - inf.
        shift = tl.where(new_max == -float("inf"), 0.0, new_max)  # [M]
        probs = tl.exp(scores - shift[:, None])  # [M, BLOCK_N]
        rescale = tl.exp(row_max - shift)  # [M]
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # [M, HEAD_BLOCK]
    o_offs = (q_start + token).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + dim[None, :] * stride_od
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid)


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
    """Same contract as `adaspec.kernels.paged_attention_ref.paged_attention` (max_seq_len is only checked)."""
    assert query.dim() == 3 and key_cache.dim() == 4 and block_tables.dim() == 2
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    batch = seq_lens.shape[0]
    assert key_cache.shape == value_cache.shape and key_cache.shape[-1] == head_dim
    assert num_heads % num_kv_heads == 0 and cu_query_lens.shape == (batch + 1,)
    assert block_tables.shape[0] == batch and max_seq_len <= block_tables.shape[1] * block_size
    assert all(t.device == query.device for t in (key_cache, value_cache, block_tables, cu_query_lens, seq_lens))
    out = torch.empty_like(query, memory_format=torch.contiguous_format)  # [num_tokens, num_heads, head_dim]
    if num_tokens == 0 or batch == 0:
        return out
    block_tables = block_tables.contiguous()  # rows are indexed with stride(0) only
    group_size = num_heads // num_kv_heads
    group_block = triton.next_power_of_2(group_size)
    fp32 = query.dtype == torch.float32
    # Query tokens per program: all of a request's when they fit the row budget (every further tile of
    # the same request reads all its keys and values again), and at least MIN_DOT rows for tl.dot.
    # fp32 tiles take twice the registers and shared memory: half the rows and keys per step.
    row_budget = TARGET_ROWS // 2 if fp32 else TARGET_ROWS
    block_q = min(triton.next_power_of_2(max(max_query_len, 1)), max(1, row_budget // group_block))
    block_q = max(block_q, triton.cdiv(MIN_DOT, group_block))
    rows = block_q * group_block
    grid = (batch, num_kv_heads, triton.cdiv(max_query_len, block_q))
    _paged_attention_kernel[grid](
        query, key_cache, value_cache, block_tables, cu_query_lens, seq_lens, out, scale,
        *query.stride(), *key_cache.stride(), *value_cache.stride(), *out.stride(), block_tables.stride(0),
        block_size, group_size, HEAD_DIM=head_dim,
        BLOCK_Q=block_q, GROUP_BLOCK=group_block, BLOCK_N=BLOCK_N // 2 if fp32 else BLOCK_N,
        HEAD_BLOCK=max(MIN_DOT, triton.next_power_of_2(head_dim)),
        # fp32 caches: exact fp32 products (tf32 would cost ~1e-3 relative error); 16-bit: ignored.
        DOT_PRECISION="ieee" if fp32 else "tf32",
        num_warps=8 if rows > 64 or (fp32 and rows == 64) else 4,  # no register spills on sm_90 (ptxas -v)
    )
    return out
