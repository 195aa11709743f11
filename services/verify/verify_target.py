"""The verify engine as an engine target (`adaspec.service_runtime.engine_core`): commands in, plain data out.

It runs where the engine steps (a process of its own, or a worker thread of the service), so what
the wire brings is parsed here, off the service's event loop: a step arrives as the serialized
`DraftTokens` message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaspec.engine.engine import Prompt
from adaspec.engine.verify_engine import Proposal, StepResult, VerifyEngine
from adaspec.sampling_params import SamplingParams
from adaspec.v1 import common_pb2

NO_DRAFTS = Proposal([], torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1))  # a k = 0 step (read-only)


class SessionFinished(Exception):
    """A step arrived after the session's final step (sent ahead of the final reply): ignored."""


@dataclass
class OpenedSession:
    seq_id: int
    prompt_token_ids: list[int]


class VerifyTarget:
    """`engine`'s latency profile is the one it was given (`profile=`, a file from `adaspec profile`), or the
    quick grid measured now: the replica publishes it with its load."""

    def __init__(self, engine: VerifyEngine):
        self.engine = engine
        if engine.planner.verify_latency is None:
            engine.planner.use_profile(engine.measure_profile())

    @classmethod
    def build(cls, **engine_args) -> VerifyTarget:
        """What the engine process runs: `VerifyEngine(**engine_args)`."""
        return cls(VerifyEngine(**engine_args))

    def info(self) -> dict:
        return {"max_model_len": self.engine.max_model_len, "max_num_seqs": self.engine.scheduler.max_num_seqs,
                "tokenizer_path": self.engine.target.path, "model_path": self.engine.target.path}

    def open(self, prompt: Prompt, params: SamplingParams, resume_output: list[int], ttft_ms: float | None = None,
             tpot_ms: float | None = None) -> OpenedSession:
        seq = self.engine.open(prompt, params, resume_output, ttft_ms, tpot_ms)
        return OpenedSession(seq.seq_id, seq.token_ids[: seq.num_prompt_tokens])

    def submit(self, seq_id: int, step: bytes) -> None:
        if self.engine.is_finished(seq_id):
            raise SessionFinished
        self.engine.submit(seq_id, proposal_from_proto(common_pb2.DraftTokens.FromString(step)))

    def close(self, seq_id: int) -> None:
        self.engine.close(seq_id)

    def step(self) -> dict[int, StepResult]:
        return {r.seq_id: r for r in self.engine.step()}

    def status(self) -> dict:
        scheduler, blocks = self.engine.scheduler, self.engine.target_runner.kv_cache.blocks
        planner = self.engine.planner
        # queued_tokens: committed tokens not in the cache yet (ReplicaLoad), mostly prompts waiting for prefill
        pending_prompt = sum(len(s.token_ids) - blocks.num_tokens(s.seq_id) for s in scheduler.running
                             if s.seq_id in blocks) + sum(len(s.token_ids) for s in scheduler.waiting)
        return {"has_work": self.engine.has_ready_work(), "waiting": len(scheduler.waiting),
                "queued_tokens": pending_prompt, "free_kv_blocks": blocks.num_free_blocks,
                "total_kv_blocks": blocks.num_blocks, "latency_coef": list(planner.verify_latency.model.coef),
                "acceptance_counts": planner.calibrator.to_list(), "mean_context": planner.mean_context,
                "step_tokens": planner.mean_tokens, "step_batch": planner.mean_batch}


def proposal_from_proto(msg: common_pb2.DraftTokens) -> Proposal:
    k, width = len(msg.token_ids), msg.sparse_k
    if k and width < 1:
        raise ValueError("step.sparse_k: must be >= 1 when there are draft tokens")
    if len(msg.topk_ids) != k * width or len(msg.topk_probs) != k * width:
        raise ValueError(f"step.topk_ids: expected {k} x {width} entries, got {len(msg.topk_ids)} ids and "
                         f"{len(msg.topk_probs)} probabilities")
    if not k:
        return NO_DRAFTS
    return Proposal(
        token_ids=list(msg.token_ids),
        # list() first: torch.tensor reads a protobuf repeated field element by element, several times slower
        topk_ids=torch.tensor(list(msg.topk_ids), dtype=torch.long).view(k, width),  # [k, K]
        topk_probs=torch.tensor(list(msg.topk_probs), dtype=torch.float32).view(k, width),  # [k, K]
        confidences=list(msg.confidences),
    )
