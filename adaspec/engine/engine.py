"""The speculative decoding engine: continuous batching, ragged per-request drafts, lossless verification.

One step, for every running request at once:
  budget    each request's policy gives it a draft budget (`adaspec.speculation`: k_i <= max_spec_len, and a
            stop rule the drafter applies token by token), from the batch's load and the latency profile;
  schedule  decoding requests first, then prompt chunks within the token budget;
  propose   the draft model drafts within each budget (ragged) and catches up on committed tokens; a step
            where every budget is 0 runs no draft forward at all (the draft catches up when it next drafts);
  score     one packed target forward over prompt chunks and [last token, drafts] of every request;
  verify    rejection sampling (kernels.rejection_sample) accepts a prefix and adds one target token;
  commit    append the emitted tokens, roll both KV caches back to what was accepted, finish requests;
  learn     the calibration, each request's acceptance, the policies and the latency models hear the outcome.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path

import torch
from tqdm import tqdm

from adaspec import kernels
from adaspec.engine import latency_probe, request_intake
from adaspec.engine.cuda_graphs import require_cuda
from adaspec.engine.detokenizer import IncrementalDetokenizer
from adaspec.engine.drafter import SPARSE_K, Drafter, Drafts, no_drafts
from adaspec.engine.kv_cache import allocate_kv_caches
from adaspec.engine.model_loader import (
    BUNDLED_DRAFT,
    BUNDLED_TARGET,
    check_same_vocabulary,
    default_device,
    default_dtype,
    default_kv_budget,
    load_model,
)
from adaspec.engine.model_runner import ForwardItem, ModelRunner
from adaspec.engine.scheduler import Scheduler
from adaspec.engine.sequence import Sequence, SequenceStatus
from adaspec.engine.step_planner import StepPlanner, StepTimings
from adaspec.engine.stop_conditions import eos_token_ids, stop_reason
from adaspec.engine.verification import verify
from adaspec.outputs import RequestOutput
from adaspec.sampling_params import SamplingParams
from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.latency_profile import LatencyProfile
from adaspec.speculation.policies import DEFAULT_POLICY, Policy
from adaspec.speculation.prefill_budget import WaitingPrompt
from adaspec.speculation.step_state import StepLoad

Prompt = str | list[int]


class Engine:
    """Speculative decoding over a target and a draft model that share a vocabulary.

    `Engine()` loads the bundled pair; `Engine(target="dir", draft="dir")` any local HF checkpoints of
    the Llama family; without a draft only the `none` policy is available. `profile`: a latency profile
    (`adaspec profile` writes one) for the policies that need one; without it, the quick grid is measured
    the first time such a policy runs. `cuda_graphs`: decode and verify forwards replay CUDA graphs captured at
    start (CUDA only; `adaspec.engine.cuda_graphs`).
    """

    external_drafts = False  # True where drafts arrive from outside (the verify service's engine)

    def __init__(
        self,
        target: str | None = None,
        draft: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_cache_memory: int | None = None,
        block_size: int = 16,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        max_spec_len: int = 8,
        max_model_len: int | None = None,
        seed: int = 0,
        profile: str | Path | LatencyProfile | None = None,
        cuda_graphs: bool = False,
    ):
        if target is None:
            target, draft = BUNDLED_TARGET, draft or BUNDLED_DRAFT
        self.device = torch.device(device) if device is not None else default_device()
        if cuda_graphs:
            require_cuda(self.device)
        dtype = dtype or default_dtype(self.device)
        if not 0 <= max_spec_len <= kernels.rejection_sampler_ref.MAX_SPEC_LEN:
            raise ValueError(f"max_spec_len must be in [0, {kernels.rejection_sampler_ref.MAX_SPEC_LEN}]")
        self.max_spec_len = max_spec_len
        self.target = load_model(target, self.device, dtype)
        self.draft = load_model(draft, self.device, dtype) if draft is not None else None
        if self.draft is not None:
            check_same_vocabulary(self.target, self.draft)
        self.tokenizer = self.target.tokenizer
        limits = [self.target.max_model_len] + ([self.draft.max_model_len] if self.draft else [])
        self.max_model_len = min(limits + ([max_model_len] if max_model_len else []))
        self.eos_token_ids = eos_token_ids(self.target)

        budget = kv_cache_memory or default_kv_budget(self.device)
        target_cache, *draft_cache = allocate_kv_caches([m for m in (self.target, self.draft) if m is not None],
                                                        budget, block_size, self.device)
        self.target_runner = ModelRunner(self.target, target_cache)
        self.drafter = Drafter(ModelRunner(self.draft, *draft_cache), self.target.vocab_size) if self.draft else None
        if cuda_graphs:
            self._capture_cuda_graphs(max_num_seqs)
        self.scheduler = Scheduler(
            target_cache.blocks, self.drafter.blocks if self.drafter else None, max_num_seqs, max_num_batched_tokens,
            reserve_tokens=self._reserve_tokens,
        )
        self._ids = itertools.count()
        self._seed_source = random.Random(seed)
        self._sequences: dict[int, Sequence] = {}
        if isinstance(profile, (str, Path)):
            profile = LatencyProfile.load(profile)
        self.planner = StepPlanner(max_spec_len, profile, self.measure_profile)

    # ---- requests -------------------------------------------------------------------------------

    def add_request(self, prompt: Prompt, params: SamplingParams, policy: str | Policy = DEFAULT_POLICY,
                    resume_output: Seq[int] = (), ttft_ms: float | None = None, tpot_ms: float | None = None) -> int:
        """Validate and queue one request; returns its id. Raises ValueError or KVCacheExhausted.

        `resume_output`: tokens the request already generated elsewhere (a replica that failed). They are
        prefilled after the prompt and count toward max_tokens and stop strings, so the request goes on
        as from that point: greedy exactly as it would have there, sampled with the same distribution.
        `ttft_ms`, `tpot_ms`: the request's latency SLOs, for the policies that read them (`adaspec`)."""
        seq = self._new_sequence(prompt, params, policy, resume_output, ttft_ms, tpot_ms)
        self._check_fits(seq)
        self._sequences[seq.seq_id] = seq
        self.scheduler.add(seq)
        return seq.seq_id

    def abort(self, request_id: int) -> None:
        seq = self._sequences.get(request_id)
        if seq is not None and not seq.finished:
            self._finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def pop_output(self, request_id: int) -> RequestOutput:
        """The output of a finished request; forgets the request."""
        seq = self._sequences.pop(request_id)
        assert seq.finished, f"request {request_id} is still running"
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        if seq.stop_text_index is not None:
            text = text[: seq.stop_text_index]
        return RequestOutput(
            request_id=seq.seq_id,
            prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
            token_ids=seq.output_ids,
            text=text,
            finish_reason=seq.finish_reason,
            stats=seq.stats.as_dict(seq.num_output_tokens),
        )

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        policy: str | Policy = DEFAULT_POLICY,
        use_tqdm: bool = False,
        ttft_ms: float | None = None,
        tpot_ms: float | None = None,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order. Every prompt is checked before any runs.
        `ttft_ms`, `tpot_ms`: every request's latency SLOs (see `add_request`)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params if params is not None else SamplingParams()
        params_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} SamplingParams")
        seqs = [self._new_sequence(p, sp, policy, (), ttft_ms, tpot_ms) for p, sp in zip(prompts, params_list)]
        for seq in seqs:
            self._check_fits(seq)
        for seq in seqs:
            self._sequences[seq.seq_id] = seq
            self.scheduler.add(seq)
        try:
            with tqdm(total=len(seqs), disable=not use_tqdm, desc="generate", unit="req") as bar:
                while not all(s.finished for s in seqs):
                    bar.update(len(self.step()))
        except BaseException:  # a step raised (or Ctrl-C): nobody will pop these outputs, so forget them here
            for seq in seqs:
                self.abort(seq.seq_id)
                del self._sequences[seq.seq_id]
            raise
        return [self.pop_output(s.seq_id) for s in seqs]

    # ---- one engine step ------------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """Advance every running request by one speculative step; returns the requests that finished."""
        start = time.perf_counter()
        decoding = self.scheduler.decoding()
        prompts = self.scheduler.waiting_prompts(start)
        budgets, ctx = self._plan(decoding, prompts)
        spent = sum(b.max_tokens + 1 for b in budgets)
        prefills = self.scheduler.schedule_prefills(self._prompt_budget(decoding, decoding, spent, prompts, lambda: [
            self.planner.expected_step_tokens(s, b.max_tokens) for s, b in zip(decoding, budgets)]))
        drafts = self._propose(decoding, budgets)
        drafted = time.perf_counter()
        logits, verifying, verify_shape = self._score(decoding, drafts, prefills)
        num_accepted, emitted = self._verify(verifying, drafts.tokens + [[]] * (len(verifying) - len(decoding)),
                                             drafts, logits)
        verified = time.perf_counter()
        finished = self._commit(verifying, drafts, num_accepted, emitted)
        self.planner.learn(decoding, ctx, drafts.confidences, num_accepted[: len(decoding)], StepTimings(
            (time.perf_counter() - start) * 1e3, (drafted - start) * 1e3, drafts.forwards,
            (verified - drafted) * 1e3, verify_shape))
        return finished

    def _plan(self, decoding: list[Sequence], prompts: list[WaitingPrompt]):
        """Each decoding request's draft budget from its policy, capped by the room it has left (`prompts`: the
        step's `Scheduler.waiting_prompts`)."""
        if self.drafter is not None:  # the draft cache fills at a request's first draft step, and catches up after
            blocks = self.drafter.blocks
            for seq in decoding:
                cached = blocks.num_tokens(seq.seq_id) if seq.seq_id in blocks else 0
                seq.request_state.draft_lag_tokens = max(0, len(seq.token_ids) - cached - 1)
        budgets, ctx = self.planner.budgets(decoding, self._step_load(decoding, prompts))
        return [self._budget(seq, b) for seq, b in zip(decoding, budgets)], ctx

    def _step_load(self, decoding: list[Sequence], prompts: list[WaitingPrompt]) -> StepLoad:
        """The step as the policies see it: the decoding batch, and the prompt chunks expected to join it."""
        blocks = self.target_runner.kv_cache.blocks
        prefilling = [s for s in self.scheduler.running if s.status is SequenceStatus.PREFILLING]
        prompt_tokens = sum(len(s.token_ids) - blocks.num_tokens(s.seq_id) for s in prefilling)
        if prompt_tokens:  # what the chunk budget will let in, before drafts take their share
            prompt_tokens = min(prompt_tokens, max(0, self._prompt_budget(decoding, decoding, len(decoding), prompts)))
        return StepLoad(batch=len(decoding) + len(prefilling), other_tokens=prompt_tokens,
                        context=_mean_context(decoding), overhead_ms=self.planner.overhead_ms,
                        step_cap_ms=max(min((p.ttft_left_ms for p in prompts), default=math.inf), 0.0))

    def _prompt_budget(self, decoding: list[Sequence], rows: list[Sequence], query_tokens: int,
                       prompts: list[WaitingPrompt] | None = None,
                       step_tokens: Callable[[], list[float]] | None = None) -> int:
        """The prompt tokens this step may carry: what `max_num_batched_tokens` leaves, and no more than keeps
        the decoding requests' TPOT SLOs (`adaspec.speculation.prefill_budget`). `rows`: the decoding requests in
        this step's forward, with `query_tokens` in all; `prompts`: `Scheduler.waiting_prompts` when the caller has
        them; `step_tokens`: gives the tokens each decoding request is expected to commit in the step (1 when not
        given; asked only when prompts wait: it costs a pass over the batch)."""
        room = self.scheduler.max_num_batched_tokens - query_tokens
        prompts = self.scheduler.waiting_prompts(time.perf_counter()) if prompts is None else prompts
        if not prompts:
            return room
        return self.planner.prompt_budget(decoding, (len(rows), query_tokens, _mean_context(rows)), prompts, room,
                                          step_tokens() if step_tokens is not None else None)

    def _budget(self, seq: Sequence, budget: DraftBudget) -> DraftBudget:
        """Cap k_i so that drafts never run past max_tokens or the context window."""
        if not seq.policy.uses_draft:
            return NO_DRAFTS
        room = min(seq.params.max_tokens - seq.num_output_tokens, self.max_model_len - len(seq.token_ids)) - 1
        return budget.capped(min(self.max_spec_len, room))

    def _propose(self, decoding: list[Sequence], budgets: list[DraftBudget]) -> Drafts:
        if self.drafter is None or not any(b.max_tokens for b in budgets):
            return no_drafts(len(decoding), min(SPARSE_K, self.target.vocab_size), self.device)
        uses = [i for i, s in enumerate(decoding) if s.policy.uses_draft]
        proposed = self.drafter.propose([decoding[i] for i in uses], [budgets[i] for i in uses])
        drafts = self.drafter.empty(len(decoding))
        drafts.topk_ids, drafts.topk_probs, drafts.forwards = proposed.topk_ids, proposed.topk_probs, proposed.forwards
        for j, i in enumerate(uses):  # `uses` is increasing, so the sparse rows stay in request order
            drafts.tokens[i], drafts.confidences[i] = proposed.tokens[j], proposed.confidences[j]
        return drafts

    def _score(self, decoding: list[Sequence], drafts: Drafts, prefills: list[tuple[Sequence, int]]):
        """One target forward. Returns (logits [rows, vocab], the requests being verified in row order, the
        forward's shape (sequences, tokens, mean context) or None without one)."""
        blocks = self.target_runner.kv_cache.blocks
        items, verifying = [], list(decoding)
        for seq, draft in zip(decoding, drafts.tokens):
            pending = seq.token_ids[blocks.num_tokens(seq.seq_id) :]
            items.append(ForwardItem(seq.seq_id, pending + draft, len(draft) + 1))
        for seq, n in prefills:
            start = blocks.num_tokens(seq.seq_id)
            completes = start + n == len(seq.token_ids)
            items.append(ForwardItem(seq.seq_id, seq.token_ids[start : start + n], int(completes)))
            if completes:
                verifying.append(seq)
        if not items:
            return torch.zeros(0, self.target.vocab_size), verifying, None
        logits = self.target_runner.forward(items)
        contexts = [blocks.num_tokens(item.seq_id) for item in items]
        return logits, verifying, (len(items), sum(len(item.token_ids) for item in items), sum(contexts) / len(contexts))

    def _verify(self, seqs: list[Sequence], draft_tokens: list[list[int]], drafts: Drafts, logits: torch.Tensor):
        return verify(seqs, draft_tokens, drafts, logits)

    def _commit(self, seqs: list[Sequence], drafts: Drafts, num_accepted: list[int], emitted: list[list[int]]):
        finished = []
        now = time.perf_counter()
        for i, seq in enumerate(seqs):
            accepted = num_accepted[i]
            committed_before = len(seq.token_ids)
            if seq.status is SequenceStatus.DECODING:
                seq.stats.steps += 1
                seq.stats.draft_tokens += len(drafts.tokens[i])
                seq.stats.accepted_tokens += accepted
            else:
                seq.status = SequenceStatus.DECODING
                seq.stats.first_token_time = now
            for token in emitted[i][: accepted + 1]:
                seq.token_ids.append(token)
                reason = stop_reason(seq, token, self.eos_token_ids, self.max_model_len)
                if reason:
                    self._finish(seq, reason)
                    finished.append(seq)
                    break
            else:
                self._roll_back(seq, committed_before + accepted)
        return finished

    def _roll_back(self, seq: Sequence, num_valid: int) -> None:
        """Truncate both caches to the tokens that were accepted (rejected drafts leave)."""
        for blocks in self._block_managers():
            if seq.seq_id in blocks:
                blocks.resize(seq.seq_id, min(blocks.num_tokens(seq.seq_id), num_valid))

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        seq.stats.finish_time = time.perf_counter()
        self.scheduler.remove(seq)
        for blocks in self._block_managers():
            blocks.free(seq.seq_id)

    # ---- setup and checks -----------------------------------------------------------------------

    def _new_sequence(self, prompt: Prompt, params: SamplingParams, policy: str | Policy,
                      resume_output: Seq[int] = (), ttft_ms: float | None = None,
                      tpot_ms: float | None = None) -> Sequence:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        request_intake.check_slos(ttft_ms, tpot_ms)
        policy = self.planner.policy(policy)
        if policy.uses_draft and self.drafter is None and not self.external_drafts:
            raise ValueError(f"policy '{policy}' needs a draft model; this engine has none (use 'none')")
        prompt_ids = request_intake.prompt_token_ids(prompt, self.tokenizer, self.target.vocab_size,
                                                     self.max_model_len)
        seed = params.seed if params.seed is not None else self._seed_source.getrandbits(63)
        seq = Sequence(next(self._ids), prompt_ids, params, seed, policy)
        seq.request_state.ttft_slo_s = None if ttft_ms is None else ttft_ms / 1e3
        seq.request_state.tpot_slo_s = None if tpot_ms is None else tpot_ms / 1e3
        if params.stop:
            seq.output_text = IncrementalDetokenizer(self.tokenizer)
        if resume_output:
            request_intake.resume(seq, list(resume_output), self.target.vocab_size, self.max_model_len)
        return seq

    def _reserve_tokens(self, seq: Sequence) -> int:
        return request_intake.reserve_tokens(seq, self.max_model_len, self.max_spec_len)

    def _check_fits(self, seq: Sequence) -> None:
        request_intake.check_fits(self._reserve_tokens(seq), self._block_managers())

    def _capture_cuda_graphs(self, max_num_seqs: int) -> None:
        """Decode and verify forwards (up to max_spec_len + 1 new tokens per sequence: a verify step, or a draft
        catching up) of both models as CUDA graphs; prefill stays eager."""
        runners = [self.target_runner] + ([self.drafter.runner] if self.drafter is not None else [])
        for runner in runners:
            runner.use_cuda_graphs(max_num_seqs, self.max_spec_len + 1, self.max_model_len)

    def _block_managers(self):
        yield self.target_runner.kv_cache.blocks
        if self.drafter is not None:
            yield self.drafter.blocks

    def measure_profile(self, grid: latency_probe.ProbeGrid = latency_probe.QUICK,
                        progress=lambda n: None) -> LatencyProfile:
        """Time target and draft forwards of the grid's shapes on this machine (the caches must be idle enough
        to hold the scratch sequences; shapes that do not fit are skipped)."""
        return latency_probe.measure_profile(
            self.target_runner, self.drafter.runner if self.drafter else None, self.max_model_len, grid, progress,
            {"device": str(self.device), "dtype": str(self.target.dtype).removeprefix("torch."),
             "target": self.target.path, "draft": self.draft.path if self.draft else None})

    def kv_usage(self) -> dict:
        """Free and total blocks of each cache (what a health endpoint or a test reads)."""
        names = ("target", "draft")
        return {name: (b.num_free_blocks, b.num_blocks) for name, b in zip(names, self._block_managers())}


def _mean_context(seqs: list[Sequence]) -> float:
    return sum(len(s.token_ids) for s in seqs) / len(seqs) if seqs else 0.0
