"""The target side of the engine, for the verify service: drafts arrive from a draft service.

Sessions are opened with a prompt (prefill: the first step samples the first token from p) and then
bring one `Proposal` per step; a proposal without drafts may queue behind the previous one (a step sent
ahead: it needs nothing from the previous step's result). Every step packs the prompt chunks and the
[last token, drafts] rows of every session that has a proposal waiting into one target forward and one
batched rejection-sampling launch, exactly as the in-process `Engine` does; sessions still waiting for
their drafts sit the step out.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from adaspec.engine.drafter import Drafts
from adaspec.engine.engine import Engine, Prompt
from adaspec.engine.model_loader import BUNDLED_TARGET
from adaspec.engine.sequence import Sequence, SequenceStatus
from adaspec.engine.step_planner import StepTimings
from adaspec.sampling_params import SamplingParams
from adaspec.speculation.draft_budget import DraftBudget
from adaspec.speculation.policies import Policy
from adaspec.speculation.step_state import StepLoad

log = logging.getLogger(__name__)


class ExternalDrafts(Policy):
    """Drafts come from a draft service; only the KV reservation for them matters here."""

    name = "external"

    def budgets(self, requests, ctx) -> list[DraftBudget]:
        raise NotImplementedError("the coordinator's policy chooses k; the verify engine only verifies")


@dataclass
class Proposal:
    token_ids: list[int]  # [k] draft tokens
    topk_ids: torch.Tensor  # [k, K] int64, the support of the draft's sparse q
    topk_probs: torch.Tensor  # [k, K] float32, sparse q (rows sum to 1)
    confidences: list[float] = field(default_factory=list)  # [k] the draft's confidence in each token (calibration)


@dataclass
class StepResult:
    seq_id: int
    token_ids: list[int]  # committed this step: accepted drafts then the target's token (or the first token)
    num_accepted: int
    finish_reason: str | None  # None while running
    max_draft_tokens: int  # the most drafts the next step may bring (0 once finished)
    stop_text_index: int | None  # where a matched stop string starts in the output text


class VerifyEngine(Engine):
    external_drafts = True

    def __init__(self, target: str | None = None, **engine_args):
        super().__init__(target or BUNDLED_TARGET, None, **engine_args)
        self._proposals: dict[int, deque[Proposal]] = {}  # per session, in step order
        self._external = ExternalDrafts()

    def open(self, prompt: Prompt, params: SamplingParams, resume_output: tuple[int, ...] | list[int] = (),
             ttft_ms: float | None = None, tpot_ms: float | None = None) -> Sequence:
        """Validate and queue a session; its prefill runs in the next steps. Raises ValueError, KVCacheExhausted.
        `resume_output`: see `Engine.add_request`. `ttft_ms`, `tpot_ms`: the request's SLOs, which size the
        prompt chunks of the steps it shares (`adaspec.speculation.prefill_budget`)."""
        return self._sequences[self.add_request(prompt, params, self._external, resume_output, ttft_ms, tpot_ms)]

    def max_draft_tokens(self, seq_id: int) -> int:
        """The most drafts the session's next step may bring: max_spec_len, capped by the tokens left."""
        seq = self._sequences[seq_id]
        return self._budget(seq, DraftBudget(self.max_spec_len)).max_tokens

    def is_finished(self, seq_id: int) -> bool:
        return self._sequences[seq_id].finished

    def submit(self, seq_id: int, proposal: Proposal) -> None:
        """Queue one step's drafts for a decoding session. Raises ValueError on a malformed proposal, or on
        drafts queued behind another step (drafts continue the previous step's result)."""
        seq = self._sequences[seq_id]
        if seq.status is not SequenceStatus.DECODING:
            raise ValueError(f"session {seq_id} is not waiting for drafts (status {seq.status.value})")
        queued = self._proposals.get(seq_id)
        if queued and proposal.token_ids:
            raise ValueError("step.token_ids: drafts sent before the previous step was verified")
        if queued:  # without drafts: nothing to check against the state after the previous step
            queued.append(proposal)
            return
        k, room = len(proposal.token_ids), self.max_draft_tokens(seq_id)
        if k > room:
            raise ValueError(f"step.token_ids: {k} draft tokens, at most {room} allowed now")
        if proposal.topk_ids.shape != proposal.topk_probs.shape or proposal.topk_ids.shape[0] != k:
            raise ValueError(f"step.topk_ids/topk_probs: shapes {tuple(proposal.topk_ids.shape)} and "
                             f"{tuple(proposal.topk_probs.shape)}, expected [{k}, sparse_k]")
        vocab = self.target.vocab_size
        ids_out_of_range = k and ((proposal.topk_ids < 0) | (proposal.topk_ids >= vocab)).any()
        if ids_out_of_range or any(not 0 <= t < vocab for t in proposal.token_ids):
            raise ValueError(f"step.token_ids: draft token ids must be in [0, {vocab})")
        self._proposals[seq_id] = deque([proposal])

    def close(self, seq_id: int) -> None:
        """End a session, finished or not; its KV blocks go back to the pool."""
        self.abort(seq_id)
        self._sequences.pop(seq_id, None)

    def has_ready_work(self) -> bool:
        return bool(self._proposals) or any(s.status is not SequenceStatus.DECODING for s in self.scheduler.running) \
            or bool(self.scheduler.waiting)

    def step(self) -> list[StepResult]:
        """Verify every waiting proposal and advance prefills in one forward; returns the sessions that moved.
        Calibrates the acceptance model on the drafts' confidences and refines the latency model."""
        start = time.perf_counter()
        decoding = self.scheduler.decoding()
        ready = [s for s in decoding if s.seq_id in self._proposals]
        proposals = [self._next_proposal(s.seq_id) for s in ready]
        spent = sum(len(p.token_ids) + 1 for p in proposals)
        # every decoding session's SLO bounds the prompt chunk, those waiting for drafts too (they step next, one
        # token or more: counted as one); a session verifying drafts may take a step as long as the tokens it
        # expects from them
        budget = self._prompt_budget(decoding, ready, spent,
                                     step_tokens=lambda: self._step_tokens(decoding, ready, proposals))
        prefills = self.scheduler.schedule_prefills(budget)
        if log.isEnabledFor(logging.DEBUG):  # what a long step carried: drafts, or prompts within what budget
            log.debug("verify step", extra={"decoding": len(decoding), "ready": len(ready), "query_tokens": spent,
                                            "prompt_budget": budget, "prompt_tokens": sum(n for _, n in prefills),
                                            "prompts": len(prefills)})
        drafts = self._stack(proposals)
        before = {s.seq_id: len(s.token_ids) for s in ready + [s for s, _ in prefills]}
        logits, verifying, shape = self._score(ready, drafts, prefills)
        draft_tokens = drafts.tokens + [[]] * (len(verifying) - len(ready))
        num_accepted, emitted = self._verify(verifying, draft_tokens, drafts, logits)
        verify_ms = (time.perf_counter() - start) * 1e3
        self._commit(verifying, drafts, num_accepted, emitted)
        ctx = self.planner.context(StepLoad(batch=len(verifying)), measure=False)
        self.planner.learn(ready, ctx, [p.confidences[: len(p.token_ids)] for p in proposals],
                           num_accepted[: len(ready)], StepTimings(verify_ms, 0.0, [], verify_ms, shape))
        return [
            StepResult(s.seq_id, s.token_ids[before[s.seq_id] :], num_accepted[i], s.finish_reason,
                       0 if s.finished else self.max_draft_tokens(s.seq_id), s.stop_text_index)
            for i, s in enumerate(verifying)
        ]

    def _finish(self, seq: Sequence, reason: str) -> None:
        super()._finish(seq, reason)
        self._proposals.pop(seq.seq_id, None)  # a step sent ahead of the final one

    def _step_tokens(self, decoding: list[Sequence], ready: list[Sequence],
                     proposals: list[Proposal]) -> list[float]:
        """The tokens each decoding session is expected to commit in the step: from its drafts' confidences if it
        verifies drafts, else one (asked only when prompts wait)."""
        confidences = {s.seq_id: p.confidences[: len(p.token_ids)] for s, p in zip(ready, proposals)}
        return [self.planner.expected_step_tokens(s, confidences=confidences.get(s.seq_id)) for s in decoding]

    def _next_proposal(self, seq_id: int) -> Proposal:
        queued = self._proposals[seq_id]
        proposal = queued.popleft()
        if not queued:
            del self._proposals[seq_id]
        return proposal

    def _stack(self, proposals: list[Proposal]) -> Drafts:
        """One Drafts for the batch; sparse rows padded to the widest K with zero mass (ignored by the sampler)."""
        width = max([p.topk_ids.shape[1] for p in proposals if p.token_ids] or [1])
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))
        rows = [p for p in proposals if p.token_ids]
        ids = torch.cat([pad(p.topk_ids) for p in rows]) if rows else torch.zeros(0, width, dtype=torch.long)
        probs = torch.cat([pad(p.topk_probs) for p in rows]) if rows else torch.zeros(0, width)
        return Drafts([p.token_ids for p in proposals], ids.to(self.device), probs.to(self.device),
                      [[] for _ in proposals])
