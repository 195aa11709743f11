"""Draft service: the draft model behind one bidirectional stream per request.

A session opens with the prompt and the request's sampling settings and seed (no reply: its prefill
happens with its first step). Each step commits what the verify pool accepted and drafts up to k tokens,
returning them with the sparse q (K <= 32 entries per token; one for greedy requests, whose q
verification ignores). All sessions share one continuous batch (`EngineLoop` over `DraftEngine`).
"""

from __future__ import annotations

import logging
import time

import grpc

from adaspec.engine.draft_engine import DraftEngine, DraftOutput, DraftWork
from adaspec.engine.kv_cache import KVCacheExhausted
from adaspec.errors import abort, invalid_argument_from, rich_status
from adaspec.loadstore import ReplicaLoad
from adaspec.policy import DraftBudget
from adaspec.serving.convert import params_from_proto
from adaspec.serving.engine_loop import EngineLoop, EngineStepFailed, EngineStopped
from adaspec.serving.replica import same_torch_threads
from adaspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["Draft"].full_name


class DraftService(draft_pb2_grpc.DraftServicer):
    def __init__(self, engine: DraftEngine, replica_id: str, address: str, max_sessions: int = 256):
        self.engine = engine
        self.replica_id, self.address, self.max_sessions = replica_id, address, max_sessions
        self._pending: dict[int, DraftWork] = {}
        self.loop = EngineLoop(self._step, lambda: bool(self._pending), "draft", init_thread=same_torch_threads())

    def _step(self) -> dict[int, DraftOutput]:
        work, self._pending = list(self._pending.values()), {}
        return self.engine.step(work)

    async def Session(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a draft session starts with an open message",
                        field="open")
        if self.engine.num_sessions >= self.max_sessions:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"draft replica {self.replica_id} is full ({self.engine.num_sessions} sessions)",
                        retry_after_s=0.5)
        seq_id = None
        try:
            msg = first.open
            try:
                params = params_from_proto(msg.params, seed=msg.seed)
                seq_id = await self.loop.call(lambda: self.engine.open(list(msg.prompt_token_ids), params, msg.seed))
            except ValueError as error:
                await context.abort_with_status(invalid_argument_from(error, "open.prompt_token_ids"))
            except KVCacheExhausted as error:
                await context.abort_with_status(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error),
                                                            retry_after_s=0.5))
            async for request in request_iterator:
                if request.WhichOneof("kind") != "step":
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expected a step message", field="step")
                step = request.step
                work = DraftWork(seq_id, step.num_accepted, list(step.token_ids),
                                 DraftBudget(step.max_draft_tokens, step.min_confidence))
                sent = time.perf_counter()
                try:
                    await self.loop.call(lambda: self._queue(work), key=seq_id)
                except ValueError as error:
                    await context.abort_with_status(invalid_argument_from(error, "step"))
                output, step_ms = await self.loop.result(seq_id)
                yield draft_pb2.DraftResponse(
                    drafts=drafts_to_proto(output, greedy=params.greedy),
                    queue_ms=max(0.0, (time.perf_counter() - sent) * 1e3 - step_ms),
                    step_ms=step_ms,
                )
        except EngineStopped as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except EngineStepFailed as error:
            await abort(context, grpc.StatusCode.INTERNAL, str(error))
        finally:
            if seq_id is not None:
                self.loop.forget(seq_id)
                self.loop.post(lambda: self._close(seq_id))

    def _queue(self, work: DraftWork) -> None:
        if work.seq_id in self._pending:
            raise ValueError("step: the previous step of this session has not been answered yet")
        self.engine.check(work)
        self._pending[work.seq_id] = work

    def _close(self, seq_id: int) -> None:
        self._pending.pop(seq_id, None)
        self.engine.close(seq_id)

    async def GetLoad(self, request, context) -> common_pb2.ReplicaLoad:
        return self.snapshot().to_proto()

    def snapshot(self) -> ReplicaLoad:
        free, total = self.engine.kv_usage()
        return ReplicaLoad(
            replica_id=self.replica_id, kind="draft", pool="draft", address=self.address,
            sessions=self.engine.num_sessions, queued_tokens=sum(w.budget.max_tokens for w in self._pending.values()),
            free_kv_blocks=free, total_kv_blocks=total, max_sessions=self.max_sessions,
            step_latency_ms=self.loop.step_latency_ms,
        )


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
