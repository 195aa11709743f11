"""Batched drafting with a per-request number of draft tokens (ragged across the batch).

Each request drafts from its own top-K-truncated distribution q (K <= 32) at its own sampling
settings; the sparse q is what verification needs (and all that would cross the wire), so the
rejection test against it is exact. The first draft forward also feeds every committed token the
draft has not seen yet, for every request, including those that draft nothing this step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaspec.engine.model_runner import ForwardItem, ModelRunner
from adaspec.policy import DraftBudget
from adaspec.engine.sequence import Sequence
from kernels.rng import splitmix64, uniform
from kernels.sampling import processed_probs

SPARSE_K = 32
DRAFT_STREAM = 1


@dataclass
class Drafts:
    tokens: list[list[int]]  # per request, its draft tokens in order
    topk_ids: torch.Tensor  # [num_draft_tokens, K] sparse q's support, request by request
    topk_probs: torch.Tensor  # [num_draft_tokens, K] sparse q
    confidences: list[list[float]]  # per request, q(token) before truncation, per draft token


def no_drafts(num_seqs: int, sparse_k: int, device: torch.device) -> Drafts:
    none = torch.zeros(0, sparse_k, device=device)
    return Drafts([[] for _ in range(num_seqs)], none.long(), none, [[] for _ in range(num_seqs)])


class Drafter:
    def __init__(self, runner: ModelRunner, target_vocab_size: int):
        self.runner = runner
        self.blocks = runner.kv_cache.blocks
        self.vocab_size = target_vocab_size
        self.sparse_k = min(SPARSE_K, target_vocab_size)

    def empty(self, num_seqs: int) -> Drafts:
        return no_drafts(num_seqs, self.sparse_k, self.runner.device)

    def propose(self, seqs: list[Sequence], budgets: list[DraftBudget]) -> Drafts:
        drafts = self.empty(len(seqs))
        if not seqs:
            return drafts
        seeds = [splitmix64(s.seed, len(s.token_ids), DRAFT_STREAM) for s in seqs]
        active = [i for i, b in enumerate(budgets) if b.max_tokens > 0]
        items = [
            ForwardItem(s.seq_id, s.token_ids[self.blocks.num_tokens(s.seq_id) :], int(b.max_tokens > 0))
            for s, b in zip(seqs, budgets)
        ]
        rows: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (request, ids [K], probs [K]) per token
        while items:
            logits = self.runner.forward(items)  # [len(active), vocab]
            if not active:
                break
            position = len(drafts.tokens[active[0]])
            tokens, ids, probs, confidence = self.sample(
                logits, [seqs[i] for i in active], [seeds[i] for i in active], position
            )
            for row, i in enumerate(active):
                drafts.tokens[i].append(tokens[row])
                drafts.confidences[i].append(confidence[row])
                rows.append((i, ids[row], probs[row]))
            active = [
                i for row, i in enumerate(active)
                if len(drafts.tokens[i]) < budgets[i].max_tokens and confidence[row] >= budgets[i].min_confidence
            ]
            items = [ForwardItem(seqs[i].seq_id, [drafts.tokens[i][-1]], 1) for i in active]
        if rows:
            rows.sort(key=lambda r: r[0])  # stable: request by request, draft positions in order
            drafts.topk_ids = torch.stack([r[1] for r in rows])
            drafts.topk_probs = torch.stack([r[2] for r in rows])
        return drafts

    def sample(self, logits: torch.Tensor, seqs: list[Sequence], seeds: list[int], position: int):
        """Draw one draft token per row from top-K-truncated q. logits: [rows, draft_vocab]."""
        logits = self._fit_vocab(logits)  # [rows, vocab]
        device = logits.device
        params = [s.params for s in seqs]
        if all(p.greedy for p in params):  # verification ignores q for greedy rows: skip sampling work
            confidence, tokens = logits.softmax(dim=-1).max(dim=-1)  # [rows], [rows]
            ids = tokens[:, None].expand(-1, self.sparse_k)  # [rows, K]
            return tokens.tolist(), ids, _first_entry_one_hot(ids.shape, device), confidence.tolist()
        greedy = torch.tensor([p.greedy for p in params], device=device)
        q_full = processed_probs(
            logits,
            torch.tensor([p.temperature for p in params], device=device),
            torch.tensor([p.top_k for p in params], device=device),
            torch.tensor([p.top_p for p in params], device=device),
        )  # [rows, vocab]
        top_probs, top_ids = q_full.topk(self.sparse_k, dim=-1)  # [rows, K], descending
        q_sparse = top_probs / top_probs.sum(dim=-1, keepdim=True)  # [rows, K]
        u = uniform(torch.tensor(seeds, device=device), torch.full((len(seqs),), position, device=device))
        choice = (q_sparse.cumsum(dim=-1) < u[:, None]).sum(dim=-1).clamp(max=self.sparse_k - 1)  # [rows]
        choice = torch.where(greedy, torch.zeros_like(choice), choice)
        q_sparse = torch.where(greedy[:, None], _first_entry_one_hot(q_sparse.shape, device), q_sparse)
        tokens = top_ids.gather(1, choice[:, None])[:, 0]
        confidence = top_probs.gather(1, choice[:, None])[:, 0]
        return tokens.tolist(), top_ids, q_sparse, confidence.tolist()

    def _fit_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft and target may pad their embeddings differently; score the target's vocabulary."""
        extra = self.vocab_size - logits.shape[1]
        if extra <= 0:
            return logits[:, : self.vocab_size]
        return torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))


def _first_entry_one_hot(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Sparse q of a greedy row: all mass on its first (argmax) entry. [rows, K]"""
    one_hot = torch.zeros(shape, device=device)
    one_hot[:, 0] = 1.0
    return one_hot
