"""Paged KV cache: a fixed pool of blocks sized from a memory budget, and per-sequence block tables.

A sequence is admitted only once its worst-case number of blocks can be reserved, so a running
sequence can always grow to its limit and the process never runs out of memory; blocks are then
taken lazily as tokens arrive, and given back on truncate (rollback of rejected draft tokens) and free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class KVCacheExhausted(RuntimeError):
    """A request needs more KV blocks than the pool will ever have (refused, not queued)."""


@dataclass
class _SequenceBlocks:
    reserved: int
    num_tokens: int = 0
    blocks: list[int] = field(default_factory=list)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        assert num_blocks > 0 and block_size > 0
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, -1, -1))
        self._seqs: dict[int, _SequenceBlocks] = {}
        self._promised = 0  # reserved but not yet taken, summed over sequences

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_available_blocks(self) -> int:
        """Free blocks that no admitted sequence has a claim on."""
        return len(self._free) - self._promised

    def can_reserve(self, max_tokens: int) -> bool:
        return self.blocks_for(max_tokens) <= self.num_available_blocks

    def reserve(self, seq_id: int, max_tokens: int) -> None:
        """Admit a sequence that will hold at most `max_tokens` tokens."""
        need = self.blocks_for(max_tokens)
        if need > self.num_blocks:
            raise KVCacheExhausted(
                f"sequence needs {need} KV blocks ({max_tokens} tokens) but the cache has only "
                f"{self.num_blocks} blocks of {self.block_size} tokens; raise the KV memory budget or "
                f"lower max_tokens"
            )
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already holds KV blocks")
        if need > self.num_available_blocks:
            raise KVCacheExhausted(f"{need} KV blocks needed, {self.num_available_blocks} available now")
        self._seqs[seq_id] = _SequenceBlocks(reserved=need)
        self._promised += need

    def resize(self, seq_id: int, num_tokens: int) -> None:
        """Grow (append) or shrink (truncate) a sequence to `num_tokens` cached tokens."""
        seq = self._seqs[seq_id]
        need = self.blocks_for(num_tokens)
        if need > seq.reserved:
            raise KVCacheExhausted(f"sequence {seq_id} grew past its reservation of {seq.reserved} blocks")
        while len(seq.blocks) < need:
            seq.blocks.append(self._free.pop())
            self._promised -= 1
        while len(seq.blocks) > need:
            self._free.append(seq.blocks.pop())
            self._promised += 1
        seq.num_tokens = num_tokens

    def free(self, seq_id: int) -> None:
        """Give back every block and the rest of the reservation. Safe to call twice."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        self._free.extend(reversed(seq.blocks))
        self._promised -= seq.reserved - len(seq.blocks)

    def num_tokens(self, seq_id: int) -> int:
        return self._seqs[seq_id].num_tokens

    def block_table(self, seq_id: int) -> list[int]:
        return self._seqs[seq_id].blocks

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)


class PagedKVCache:
    """Key and value tensors per layer, `[num_blocks + 1, block_size, num_kv_heads, head_dim]`: the block manager
    hands out the first `num_blocks`; the last is scratch that a padded forward's padding tokens write to (CUDA
    graphs run fixed shapes: `adaspec.engine.cuda_graphs`)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.blocks = BlockManager(num_blocks, block_size)
        self.scratch_slot = num_blocks * block_size  # the scratch block's first slot

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * dtype.itemsize

    @classmethod
    def from_budget(cls, budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                    dtype: torch.dtype, device: torch.device) -> PagedKVCache:
        block_bytes = block_size * cls.bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        num_blocks = budget_bytes // block_bytes - 1  # the scratch block comes out of the budget too
        if num_blocks < 1:
            raise ValueError(f"KV memory budget of {budget_bytes} bytes is smaller than two blocks ({block_bytes} each: "
                             f"one to hand out, one scratch)")
        return cls(num_layers, num_kv_heads, head_dim, num_blocks, block_size, dtype, device)


def allocate_kv_caches(models: list, budget_bytes: int, block_size: int, device: torch.device) -> list[PagedKVCache]:
    """One cache per model (each a `LoadedModel`: target, then draft) from one byte budget, split so that every
    cache holds the same number of tokens."""
    per_token = [PagedKVCache.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, m.dtype) for m in models]
    return [PagedKVCache.from_budget(budget_bytes * size // sum(per_token), m.num_layers, m.num_kv_heads, m.head_dim,
                                     block_size, m.dtype, device)
            for m, size in zip(models, per_token)]
