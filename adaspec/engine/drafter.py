"""Batched drafting with a per-request number of draft tokens (ragged across the batch).

Each request drafts from its own top-K-truncated distribution q (K <= 32) at its own sampling
settings; the sparse q is what verification needs (and all that would cross the wire), so the
rejection test against it is exact. The first draft forward also feeds every committed token the
draft has not seen yet, for every request passed in, including those that draft nothing this step.
Each request stops on its own budget's rule, token by token (`adaspec.speculation.draft_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adaspec.engine.model_runner import ForwardItem, ModelRunner
from adaspec.engine.sequence import Sequence
from adaspec.kernels.rng import splitmix64, uniform
from adaspec.kernels.sampling import processed_probs
from adaspec.speculation.draft_budget import DraftBudget, DraftStop, batch_rule_keeps

SPARSE_K = 32
DRAFT_STREAM = 1


@dataclass
class Drafts:
    tokens: list[list[int]]  # per request, its draft tokens in order
    topk_ids: torch.Tensor  # [num_draft_tokens, K] sparse q's support, request by request
    topk_probs: torch.Tensor  # [num_draft_tokens, K] sparse q
    confidences: list[list[float]]  # per request, q(token) before truncation, per draft token
    forwards: list[tuple[int, int, float]] = field(default_factory=list)  # (rows, tokens, mean context) per forward


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
        """Draft for every sequence at once, each within its budget (`DraftStop`, and the batch rule over the rows
        that carry one). `Drafts.forwards` records each forward's shape."""
        drafts = self.empty(len(seqs))
        if not seqs:
            return drafts
        seeds = [splitmix64(s.seed, len(s.token_ids), DRAFT_STREAM) for s in seqs]
        stops = [DraftStop(b) for b in budgets]
        ruled = [i for i, b in enumerate(budgets) if b.batch_rule is not None and b.max_tokens > 0]
        active = [i for i, stop in enumerate(stops) if stop.going]
        items = [
            ForwardItem(s.seq_id, s.token_ids[self.blocks.num_tokens(s.seq_id) :], int(stop.going))
            for s, stop in zip(seqs, stops)
        ]
        sparse: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in seqs]  # per request: (ids, probs) [K]
        raw_p = [1.0] * len(seqs)  # product of raw confidences (the batch rule's P)
        depth_sums: list[float] = []
        while items:
            logits = self.runner.forward(items)  # [len(active), vocab]
            drafts.forwards.append(self._shape(items))
            if not active:
                break
            position = len(drafts.tokens[active[0]])
            tokens, ids, probs, confidence = self.sample(
                logits, [seqs[i] for i in active], [seeds[i] for i in active], position
            )
            for row, i in enumerate(active):
                stops[i].add(confidence[row])
                drafts.tokens[i].append(tokens[row])
                drafts.confidences[i].append(confidence[row])
                sparse[i].append((ids[row], probs[row]))
                raw_p[i] *= confidence[row]
            if ruled:
                self._apply_batch_rule(ruled, seqs, drafts, sparse, raw_p, depth_sums, stops, position + 1)
            active = [i for i in active if stops[i].going]
            items = [ForwardItem(seqs[i].seq_id, [drafts.tokens[i][-1]], 1) for i in active]
        rows = [row for per_request in sparse for row in per_request]  # request by request, positions in order
        if rows:
            drafts.topk_ids = torch.stack([r[0] for r in rows])
            drafts.topk_probs = torch.stack([r[1] for r in rows])
        return drafts

    @staticmethod
    def _apply_batch_rule(ruled: list[int], seqs: list[Sequence], drafts: Drafts, sparse: list[list],
                          raw_p: list[float], depth_sums: list[float], stops: list[DraftStop], depth: int) -> None:
        """The reference system's rule over its rows: unless this depth raises their predicted goodput
        (`batch_rule_keeps`), they all stop, and the greedy rows drop it (a sampled row keeps it: dropping a draft
        for its own confidence would bias the output; see `adaspec.speculation.draft_budget`)."""
        deep = [i for i in ruled if len(drafts.tokens[i]) == depth]
        if not deep:
            return
        depth_sums.append(sum(raw_p[i] for i in deep))
        if batch_rule_keeps(drafts_rule(stops, ruled), depth_sums, len(ruled)):
            return
        for i in deep:
            if seqs[i].params.greedy:
                drafts.tokens[i].pop()
                drafts.confidences[i].pop()
                sparse[i].pop()
        for i in ruled:
            stops[i].going = False

    def _shape(self, items: list[ForwardItem]) -> tuple[int, int, float]:
        """(rows, tokens, mean context) of a forward just run."""
        contexts = [self.blocks.num_tokens(item.seq_id) for item in items]
        return len(items), sum(len(item.token_ids) for item in items), sum(contexts) / len(contexts)

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


def drafts_rule(stops: list[DraftStop], ruled: list[int]):
    """The batch rule the ruled rows carry (the same for all of them: one policy gave it this step)."""
    return stops[ruled[0]].budget.batch_rule


def _first_entry_one_hot(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Sparse q of a greedy row: all mass on its first (argmax) entry. [rows, K]"""
    one_hot = torch.zeros(shape, device=device)
    one_hot[:, 0] = 1.0
    return one_hot
