"""CUDA graphs for decode and verify forwards: one captured graph per (sequences, tokens per sequence) bucket.

A decode or verify forward of a small model, or of a large one at small batch, is bound by how fast the host
launches its kernels (~10 per layer), not by their arithmetic. A CUDA graph replays the whole forward with one
launch. A graph is captured for a fixed shape over fixed input memory, so each bucket owns one flat input buffer
on the device, refilled by a single host-to-device copy before each replay:

    S  sequence slots (a power of two up to `max_num_seqs`), Q  the most new tokens of one sequence (1 for
    decode, k + 1 for a verify step of k drafts), T = S * Q token slots (every layout of those sequences fits)

Padding, so that a batch of s <= S sequences and t <= T tokens runs in the (S, Q) graph:
  - padding tokens write their keys and values to a scratch slot no sequence owns (the cache's last block,
    which the block manager never hands out) and belong to no sequence: the query offsets stay at t past
    the real sequences and padded sequences hold no token, so the attention kernel gives them no work.
    Their rows carry whatever the layers compute from the uninitialised attention output, in rows of their
    own (every op but attention is row-wise), and no logit reads them;
  - logit rows past the wanted ones read row 0 and are dropped.
The Triton attention kernel reads the query offsets and sequence lengths from the device, so one graph serves
every context length; its launch grid depends on S and Q only. The graph ends at the final hidden states: the output
layer runs after it on the wanted rows only (a verify step wants every row, a draft forward one row per sequence;
and a graph's output of T rows by the vocabulary, kept per graph, would add up to gigabytes over the buckets of a
large-vocabulary model). Prefill, and any forward with more tokens per sequence than the largest Q, runs eagerly.

`GraphedForward(capture=False)` runs the same padded buffers without capturing (no CUDA needed), which is how
the padding is tested on the CPU, through the PyTorch reference (rows of no request come back zero there; it plans
its gathers on the host, so it never runs inside a graph); the Triton kernel's handling of a padded batch is tested
on its own (tests/test_kernels_triton.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaspec import kernels
from adaspec.engine.attention import ForwardContext
from adaspec.engine.fused_forward import FusedForward
from adaspec.engine.kv_cache import PagedKVCache


@dataclass
class PackedBatch:
    """A forward's inputs as host lists, in the model runner's packed layout."""

    input_ids: list[int]  # [t]
    positions: list[int]  # [t]
    slots: list[int]  # [t] flat cache slot of each token
    logit_index: list[int]  # [num_logits] rows whose logits are wanted
    cu_query_lens: list[int]  # [s + 1]
    seq_lens: list[int]  # [s] tokens in the cache after this forward
    block_tables: list[list[int]]  # [s][blocks of each sequence]
    max_query_len: int


def require_cuda(device: torch.device) -> None:
    """CUDA graphs run on CUDA only: refuse anything else, naming the device (before any model loads)."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device; this engine runs on {device}")


def flat_layout(num_seqs: int, query_len: int, table_width: int) -> list[int]:
    """Sizes of a bucket's input fields, in the order of its flat buffer: token ids, positions, slots, logit rows
    (T each), query offsets (S + 1), sequence lengths (S), block tables (S x table width)."""
    tokens = num_seqs * query_len
    return [tokens, tokens, tokens, tokens, num_seqs + 1, num_seqs, num_seqs * table_width]


class _Bucket:
    """One graph's flat input buffer on the device and the views the forward reads."""

    def __init__(self, num_seqs: int, query_len: int, table_width: int, device: torch.device):
        self.num_seqs, self.query_len, self.table_width = num_seqs, query_len, table_width
        sizes = flat_layout(num_seqs, query_len, table_width)
        self.flat = torch.zeros(sum(sizes), dtype=torch.long, device=device)  # one H2D copy refills it
        views = list(torch.split(self.flat, sizes))
        self.input_ids, self.positions, self.slots, self.logit_index, self.cu_query_lens, self.seq_lens = views[:6]
        self.block_tables = views[6].view(num_seqs, table_width)  # [S, table_width]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.hidden: torch.Tensor | None = None  # [T, hidden] the graph's output: final-norm hidden states


class GraphedForward:
    """`FusedForward` over bucketed, padded inputs, captured as CUDA graphs (or run eagerly: `capture=False`)."""

    def __init__(self, forward: FusedForward, kv_cache: PagedKVCache, max_num_seqs: int, max_query_len: int,
                 max_model_len: int, capture: bool = True):
        if capture and not kernels.uses_triton(kv_cache.keys[0]):  # the reference plans its gathers on the host
            raise ValueError("CUDA graphs need the cache on a CUDA device and Triton's paged attention kernel")
        self.forward, self.kv_cache, self.capture = forward, kv_cache, capture
        self.scratch_slot = kv_cache.scratch_slot
        self.table_width = kv_cache.blocks.blocks_for(max_model_len)
        self.seq_buckets = [1 << i for i in range((max_num_seqs - 1).bit_length() + 1)]  # 1, 2, 4, ... >= max_num_seqs
        self.max_query_len = max_query_len
        self.device = kv_cache.keys[0].device
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None  # shared memory for every graph

    def bucket_for(self, num_seqs: int, max_query_len: int) -> tuple[int, int] | None:
        """The (S, Q) bucket a forward of this shape runs in, or None: eager."""
        if max_query_len > self.max_query_len or num_seqs > self.seq_buckets[-1]:
            return None
        return next(s for s in self.seq_buckets if s >= num_seqs), max_query_len

    def capture_all(self) -> None:
        """Capture every bucket now, largest first (the smaller ones reuse its memory), rather than on first use."""
        for num_seqs in reversed(self.seq_buckets):
            for query_len in range(self.max_query_len, 0, -1):
                self._bucket((num_seqs, query_len))

    def __call__(self, batch: PackedBatch, key: tuple[int, int]) -> torch.Tensor:
        """Logits [num_logits, vocab] of `batch` in bucket `key` (`bucket_for` its shape)."""
        bucket = self._bucket(key)
        bucket.flat.copy_(self.padded_inputs(batch, key), non_blocking=True)
        if bucket.graph is not None:
            bucket.graph.replay()
            hidden = bucket.hidden
        else:
            hidden = self._run(bucket)
        return self.forward.model.lm_head(hidden[: len(batch.logit_index)])  # [num_logits, vocab]

    def padded_inputs(self, batch: PackedBatch, key: tuple[int, int]) -> torch.Tensor:
        """The bucket's flat input buffer for `batch`, padded as the module docstring says (host, pinned on CUDA).
        Filled field by field: the block tables' padding alone is most of it with long contexts."""
        num_seqs, query_len = key
        t, s, num_logits = len(batch.input_ids), len(batch.seq_lens), len(batch.logit_index)
        assert t <= num_seqs * query_len and s <= num_seqs and num_logits <= num_seqs * query_len
        sizes = flat_layout(num_seqs, query_len, self.table_width)
        host = torch.zeros(sum(sizes), dtype=torch.long, pin_memory=self.device.type == "cuda")
        # zeros are the padding, but for the slots and the query offsets
        input_ids, positions, slots, logit_index, cu_query_lens, seq_lens, tables = (
            view.numpy() for view in torch.split(host, sizes))
        input_ids[:t], positions[:t], slots[:t] = batch.input_ids, batch.positions, batch.slots
        slots[t:] = self.scratch_slot  # padding tokens write the scratch block
        logit_index[:num_logits] = batch.logit_index
        cu_query_lens[: s + 1] = batch.cu_query_lens
        cu_query_lens[s + 1 :] = t  # padded sequences hold no token
        seq_lens[:s] = batch.seq_lens
        tables = tables.reshape(num_seqs, self.table_width)
        for row, table in zip(tables, batch.block_tables):
            row[: len(table)] = table
        return host

    def _bucket(self, key: tuple[int, int]) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(*key, self.table_width, self.device)
            bucket.cu_query_lens.zero_()  # empty inputs: no sequence, every token writes the scratch slot
            bucket.slots.fill_(self.scratch_slot)
            if self.capture:
                self._capture(bucket)
        return bucket

    def _capture(self, bucket: _Bucket) -> None:
        # Warm up on a side stream first (Triton compiles, cuBLAS picks its kernels), as torch.cuda.graphs asks.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(bucket)
        torch.cuda.current_stream().wait_stream(side)
        bucket.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(bucket.graph, pool=self._pool):
            bucket.hidden = self._run(bucket)

    @torch.inference_mode()
    def _run(self, bucket: _Bucket) -> torch.Tensor:
        context = ForwardContext(
            kv_cache=self.kv_cache, slot_mapping=bucket.slots, block_tables=bucket.block_tables,
            cu_query_lens=bucket.cu_query_lens, seq_lens=bucket.seq_lens, max_query_len=bucket.query_len,
            max_seq_len=self.table_width * self.kv_cache.blocks.block_size,
        )
        return self.forward.hidden_states(bucket.input_ids, bucket.positions, bucket.logit_index, context)
