"""One packed forward over a ragged batch: every sequence brings its own new tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaspec.engine.attention import ForwardContext, forward_context
from adaspec.engine.cuda_graphs import GraphedForward, PackedBatch
from adaspec.engine.fused_forward import FusedForward
from adaspec.engine.kv_cache import PagedKVCache
from adaspec.engine.model_loader import LoadedModel


@dataclass
class ForwardItem:
    seq_id: int
    token_ids: list[int]  # new tokens, appended after what the cache already holds for seq_id
    num_logits: int  # logits wanted for the last num_logits of them (0: only fill the cache)


class ModelRunner:
    """`fused`: run the engine's own Llama-family forward (`fused_forward`) where it applies, else transformers'."""

    def __init__(self, loaded: LoadedModel, kv_cache: PagedKVCache, fused: bool = True):
        self.loaded, self.model, self.kv_cache = loaded, loaded.model, kv_cache
        self.device = loaded.device
        self.fused = FusedForward(self.model) if fused and FusedForward.supports(self.model) else None
        self.graphed: GraphedForward | None = None  # decode and verify forwards as CUDA graphs, once enabled

    def use_cuda_graphs(self, max_num_seqs: int, max_query_len: int, max_model_len: int, capture: bool = True) -> None:
        """Run forwards of up to `max_num_seqs` sequences of up to `max_query_len` new tokens each as CUDA graphs,
        captured now (`capture=False`: the same padded inputs run eagerly; tests)."""
        if self.fused is None:
            raise ValueError(f"CUDA graphs run the engine's fused forward, which {type(self.model).__name__} does "
                             f"not have (Llama, Mistral and Qwen2 do)")
        self.graphed = GraphedForward(self.fused, self.kv_cache, max_num_seqs, max_query_len, max_model_len, capture)
        if capture:
            self.graphed.capture_all()

    @torch.inference_mode()
    def forward(self, items: list[ForwardItem]) -> torch.Tensor:
        """Appends every item's tokens to its cache; returns logits [sum(num_logits), vocab] float32."""
        blocks = self.kv_cache.blocks
        block_size = blocks.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_index: list[int] = []
        cu_query_lens, seq_lens, tables = [0], [], []
        for item in items:
            start = blocks.num_tokens(item.seq_id)
            end = start + len(item.token_ids)
            assert len(item.token_ids) >= max(1, item.num_logits)
            blocks.resize(item.seq_id, end)
            table = blocks.block_table(item.seq_id)
            input_ids += item.token_ids
            positions += range(start, end)
            slots += [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
            logit_index += range(len(input_ids) - item.num_logits, len(input_ids))
            cu_query_lens.append(len(input_ids))
            seq_lens.append(end)
            tables.append(table)
        max_query_len = max(len(item.token_ids) for item in items)
        if self.graphed is not None and (key := self.graphed.bucket_for(len(items), max_query_len)) is not None:
            return self.graphed(PackedBatch(input_ids, positions, slots, logit_index, cu_query_lens, seq_lens, tables,
                                            max_query_len), key).float()
        width = max(len(t) for t in tables)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)
        context = ForwardContext(
            kv_cache=self.kv_cache,
            slot_mapping=as_tensor(slots),
            block_tables=as_tensor([t + [0] * (width - len(t)) for t in tables]),
            cu_query_lens=as_tensor(cu_query_lens),
            seq_lens=as_tensor(seq_lens),
            max_query_len=max_query_len,
            max_seq_len=max(seq_lens),
        )
        if self.fused is not None:
            return self.fused(as_tensor(input_ids), as_tensor(positions), as_tensor(logit_index), context).float()
        with forward_context(context):
            out = self.model(
                input_ids=as_tensor(input_ids)[None],
                position_ids=as_tensor(positions)[None],
                logits_to_keep=as_tensor(logit_index),
                use_cache=False,
            )
        return out.logits[0].float()  # [num_logits, vocab]
