"""The draft side of the engine, for the draft service: batched drafting over many sessions.

A session holds the request's committed tokens. Each step brings, per session, what the verify pool
committed since the last step (how many of our drafts it accepted, then the tokens themselves) and a
budget; the draft cache is rolled back to the accepted drafts, the committed tokens are fed, and k_i
new tokens are drafted, all sessions in the same forwards (`Drafter.propose`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from adaspec.engine import latency_probe
from adaspec.engine.cuda_graphs import require_cuda
from adaspec.engine.drafter import Drafter
from adaspec.engine.kv_cache import KVCacheExhausted, PagedKVCache
from adaspec.engine.model_loader import (
    BUNDLED_DRAFT,
    default_device,
    default_dtype,
    default_kv_budget,
    load_model,
)
from adaspec.engine.model_runner import ModelRunner
from adaspec.engine.sequence import Sequence, check_token_ids
from adaspec.sampling_params import SamplingParams
from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.latency_profile import LatencyProfile, OnlineLatencyModel, Sample, step_features
from adaspec.speculation.policies.static import FixedLength


@dataclass
class DraftWork:
    seq_id: int
    num_accepted: int  # of this session's previous drafts
    token_ids: list[int]  # committed since the previous step: the accepted drafts, then the target's token
    budget: DraftBudget


@dataclass
class DraftOutput:
    token_ids: list[int]  # [k]
    topk_ids: torch.Tensor  # [k, K] int64, support of the sparse q
    topk_probs: torch.Tensor  # [k, K] sparse q
    confidences: list[float]  # [k] q(token) before truncation


class DraftEngine:
    def __init__(
        self,
        draft: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_cache_memory: int | None = None,
        block_size: int = 16,
        max_spec_len: int = 8,
        max_model_len: int | None = None,
        profile: str | Path | LatencyProfile | None = None,
        cuda_graphs: bool = False,
        max_graphed_seqs: int = 64,
    ):
        """`profile`: the draft model's latency profile (`adaspec profile`); without one, the quick grid is
        measured here. Either way it is refined from every step and published with the replica's load.
        `cuda_graphs`: forwards of up to `max_graphed_seqs` sessions replay CUDA graphs (CUDA only)."""
        self.device = torch.device(device) if device is not None else default_device()
        if cuda_graphs:
            require_cuda(self.device)
        self.model = load_model(draft or BUNDLED_DRAFT, self.device, dtype or default_dtype(self.device))
        self.max_spec_len = max_spec_len
        self.max_model_len = min(self.model.max_model_len, max_model_len or self.model.max_model_len)
        m = self.model
        cache = PagedKVCache.from_budget(kv_cache_memory or default_kv_budget(self.device), m.num_layers,
                                         m.num_kv_heads, m.head_dim, block_size, m.dtype, self.device)
        self.blocks = cache.blocks
        # Fit q to the tokenizer's vocabulary: the target may pad its embeddings, never its tokenizer.
        self.drafter = Drafter(ModelRunner(m, cache), len(m.tokenizer))
        if cuda_graphs:  # before the latency probe: the profile measures the forwards as they will run
            self.drafter.runner.use_cuda_graphs(max_graphed_seqs, max_spec_len + 1, self.max_model_len)
        self._sessions: dict[int, Sequence] = {}
        self._ids = itertools.count()
        if isinstance(profile, (str, Path)):
            profile = LatencyProfile.load(profile)
        if profile is None or profile.draft is None:
            grid = latency_probe.QUICK
            samples = latency_probe.probe(self.drafter.runner, grid.shapes(grid.draft_tokens, self.max_model_len),
                                          grid.repeats, logits_per_token=False)
        else:
            samples = profile.draft_samples
        self.latency = OnlineLatencyModel(samples, profile.draft if profile is not None else None)
        self.mean_batch = self.mean_context = 0.0  # EWMAs of each step's sessions and their context (published load)

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def open(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> int:
        """Admit a session for its whole life (prompt + max_tokens + drafts). Raises ValueError, KVCacheExhausted."""
        if not prompt_ids:
            raise ValueError("open.prompt_token_ids: empty")
        check_token_ids(prompt_ids, len(self.model.tokenizer), "open.prompt_token_ids: token ids")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"open.prompt_token_ids: {len(prompt_ids)} tokens; the draft's context is "
                             f"{self.max_model_len}")
        seq = Sequence(next(self._ids), prompt_ids, params, seed, FixedLength(self.max_spec_len))
        worst_case = min(len(prompt_ids) + params.max_tokens, self.max_model_len) + self.max_spec_len
        if not self.blocks.can_reserve(worst_case):
            raise KVCacheExhausted(f"draft KV cache: {self.blocks.blocks_for(worst_case)} blocks needed, "
                                   f"{self.blocks.num_available_blocks} available")
        self.blocks.reserve(seq.seq_id, worst_case)
        self._sessions[seq.seq_id] = seq
        return seq.seq_id

    def close(self, seq_id: int) -> None:
        if self._sessions.pop(seq_id, None) is not None:
            self.blocks.free(seq_id)

    def step(self, work: list[DraftWork]) -> dict[int, DraftOutput]:
        """Commit every session's new tokens and draft its k_i tokens, all sessions batched (`check`ed work)."""
        seqs = [self._commit(w) for w in work]
        budgets = [self._cap(seq, w.budget) for seq, w in zip(seqs, work)]
        start = time.perf_counter()
        drafts = self.drafter.propose(seqs, budgets)
        self.latency.observe(Sample(step_features(drafts.forwards), (time.perf_counter() - start) * 1e3))
        rows, _, context = drafts.forwards[0]
        weight = 0.1 if self.mean_batch else 1.0
        self.mean_batch += weight * (rows - self.mean_batch)
        self.mean_context += weight * (context - self.mean_context)
        counts = [0, *itertools.accumulate(len(t) for t in drafts.tokens)]
        return {
            seq.seq_id: DraftOutput(
                drafts.tokens[i],
                drafts.topk_ids[counts[i] : counts[i + 1]].cpu(),
                drafts.topk_probs[counts[i] : counts[i + 1]].float().cpu(),
                drafts.confidences[i],
            )
            for i, seq in enumerate(seqs)
        }

    def check(self, work: DraftWork) -> None:
        """Raise ValueError for a step that does not fit its session (checked before it joins a batch)."""
        seq = self._sessions.get(work.seq_id)
        if seq is None:
            raise ValueError(f"step: no open draft session {work.seq_id}")
        if not 0 <= work.num_accepted <= self.max_spec_len:
            raise ValueError(f"step.num_accepted: {work.num_accepted} is not in [0, {self.max_spec_len}]")
        check_token_ids(work.token_ids, len(self.model.tokenizer), "step.token_ids: token ids")
        if len(seq.token_ids) + len(work.token_ids) >= self.max_model_len:
            raise ValueError(f"step.token_ids: the session would pass the draft's context of {self.max_model_len}")

    def _commit(self, work: DraftWork) -> Sequence:
        seq = self._sessions[work.seq_id]
        # Rejected drafts leave the cache; the accepted ones stay and are not fed again.
        valid = len(seq.token_ids) + work.num_accepted
        self.blocks.resize(seq.seq_id, min(self.blocks.num_tokens(seq.seq_id), valid))
        seq.token_ids += work.token_ids
        return seq

    def _cap(self, seq: Sequence, budget: DraftBudget) -> DraftBudget:
        room = self.max_model_len - len(seq.token_ids) - 1
        return budget.capped(min(self.max_spec_len, room))

    def queued_tokens(self, pending: Mapping[int, DraftWork]) -> int:
        """Committed tokens not yet in the draft cache, with each session's `pending` step applied: what the next
        steps feed before drafting (a session's whole prompt on its first step; the accepted drafts stay cached)."""
        total = 0
        for seq_id, seq in self._sessions.items():
            committed, cached = len(seq.token_ids), self.blocks.num_tokens(seq_id)
            work = pending.get(seq_id)
            if work is not None:
                cached = min(cached, committed + work.num_accepted)
                committed += len(work.token_ids)
            total += max(0, committed - cached)  # between steps the cache also holds drafts not committed yet
        return total

    def kv_usage(self) -> tuple[int, int]:
        return self.blocks.num_free_blocks, self.blocks.num_blocks

