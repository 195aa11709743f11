"""The draft engine as an engine target (`adaspec.service_runtime.engine_core`): commands in, plain data out.

It runs where the engine steps (a process of its own, or a worker thread of the service); each
session's drafts leave it as the serialized `DraftTokens` message the reply carries.
"""

from __future__ import annotations

from adaspec.engine.draft_engine import DraftEngine, DraftOutput, DraftWork
from adaspec.sampling_params import SamplingParams
from adaspec.v1 import common_pb2


class DraftTarget:
    def __init__(self, engine: DraftEngine):
        self.engine = engine
        self._pending: dict[int, DraftWork] = {}  # the next step's work, per session
        self._greedy: dict[int, bool] = {}

    @classmethod
    def build(cls, **engine_args) -> DraftTarget:
        """What the engine process runs: `DraftEngine(**engine_args)` (which measures a quick latency profile
        when it is given none)."""
        return cls(DraftEngine(**engine_args))

    def info(self) -> dict:
        return {"model_path": self.engine.model.path}

    def open(self, prompt_token_ids: list[int], params: SamplingParams, seed: int) -> int:
        seq_id = self.engine.open(prompt_token_ids, params, seed)
        self._greedy[seq_id] = params.greedy
        return seq_id

    def queue(self, work: DraftWork) -> None:
        if work.seq_id in self._pending:
            raise ValueError("step: the previous step of this session has not been answered yet")
        self.engine.check(work)
        self._pending[work.seq_id] = work

    def close(self, seq_id: int) -> None:
        self._pending.pop(seq_id, None)
        self._greedy.pop(seq_id, None)
        self.engine.close(seq_id)

    def step(self) -> dict[int, bytes]:
        work, self._pending = list(self._pending.values()), {}
        outputs = self.engine.step(work)
        return {seq_id: drafts_to_proto(out, self._greedy[seq_id]).SerializeToString()
                for seq_id, out in outputs.items()}

    def status(self) -> dict:
        free, total = self.engine.kv_usage()
        return {"has_work": bool(self._pending), "free_kv_blocks": free, "total_kv_blocks": total,
                "queued_tokens": self.engine.queued_tokens(self._pending),
                "latency_coef": list(self.engine.latency.model.coef), "mean_context": self.engine.mean_context,
                "step_batch": self.engine.mean_batch}


def drafts_to_proto(output: DraftOutput, greedy: bool) -> common_pb2.DraftTokens:
    """Greedy requests send K = 1 (the draft token, mass 1): verification ignores q for them."""
    if greedy or not output.token_ids:
        return common_pb2.DraftTokens(token_ids=output.token_ids, sparse_k=1, topk_ids=output.token_ids,
                                      topk_probs=[1.0] * len(output.token_ids), confidences=output.confidences)
    return common_pb2.DraftTokens(
        token_ids=output.token_ids,
        sparse_k=output.topk_ids.shape[1],
        topk_ids=output.topk_ids.flatten().tolist(),
        topk_probs=output.topk_probs.flatten().tolist(),
        confidences=output.confidences,
    )
