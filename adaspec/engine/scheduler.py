"""Admission and per-step token budget: decoding sequences first, then prompt chunks (chunked prefill)."""

from __future__ import annotations

import math
from collections import deque

from adaspec.engine.kv_cache import BlockManager
from adaspec.engine.sequence import Sequence, SequenceStatus
from adaspec.speculation.prefill_budget import WaitingPrompt


class Scheduler:
    def __init__(self, target_blocks: BlockManager, draft_blocks: BlockManager | None, max_num_seqs: int,
                 max_num_batched_tokens: int, reserve_tokens):
        self.target_blocks, self.draft_blocks = target_blocks, draft_blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.reserve_tokens = reserve_tokens  # Sequence -> worst-case tokens it may hold in a cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def decoding(self) -> list[Sequence]:
        return [s for s in self.running if s.status is SequenceStatus.DECODING]

    def waiting_prompts(self, now: float) -> list[WaitingPrompt]:
        """The prompts still to prefill, in the order prefill serves them, with their time left before TTFT at `now`
        (perf_counter seconds)."""
        prompts = []
        for seq in [*self.running, *self.waiting]:
            if seq.status not in (SequenceStatus.PREFILLING, SequenceStatus.WAITING):
                continue
            cached = self.target_blocks.num_tokens(seq.seq_id) if seq.seq_id in self.target_blocks else 0
            ttft_s = seq.request_state.ttft_slo_s
            prompts.append(WaitingPrompt(len(seq.token_ids) - cached, math.inf if ttft_s is None
                                         else (ttft_s - (now - seq.stats.arrival_time)) * 1e3))
        return prompts

    def schedule_prefills(self, token_budget: int) -> list[tuple[Sequence, int]]:
        """Admit waiting sequences (FCFS) while KV reservations fit; give prompt chunks the budget left."""
        while self.waiting and len(self.running) < self.max_num_seqs and self._admit(self.waiting[0]):
            self.running.append(self.waiting.popleft())
        chunks = []
        for seq in self.running:
            if seq.status is not SequenceStatus.PREFILLING or token_budget <= 0:
                continue
            remaining = len(seq.token_ids) - self.target_blocks.num_tokens(seq.seq_id)
            n = min(remaining, token_budget)
            chunks.append((seq, n))
            token_budget -= n
        return chunks

    def _admit(self, seq: Sequence) -> bool:
        tokens = self.reserve_tokens(seq)
        uses_draft = seq.policy.uses_draft and self.draft_blocks is not None
        if not self.target_blocks.can_reserve(tokens) or (uses_draft and not self.draft_blocks.can_reserve(tokens)):
            return False
        self.target_blocks.reserve(seq.seq_id, tokens)
        if uses_draft:
            self.draft_blocks.reserve(seq.seq_id, tokens)
        seq.status = SequenceStatus.PREFILLING
        return True
