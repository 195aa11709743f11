"""Draft service: the draft model behind one session stream per request: on its coordinator's link (one
`Link` call carries all of a coordinator's sessions with this replica; `adaspec.service_runtime.link_server`), or
a `Session` call of its own.

A session opens with the prompt and the request's sampling settings and seed (no reply: its prefill
happens with its first step). Each step commits what the verify pool accepted and drafts up to k tokens,
returning them with the sparse q (K <= 32 entries per token; one for greedy requests, whose q
verification ignores). All sessions share one continuous batch (`EngineLoop` over a `DraftTarget`, in
a process of its own or in a worker thread: `adaspec.service_runtime.replica.start_engine_core`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import grpc

from adaspec.engine.draft_engine import DraftWork
from adaspec.engine.kv_cache import KVCacheExhausted
from adaspec.errors import abort, invalid_argument_from, rich_status
from adaspec.loadstore import ReplicaLoad
from adaspec.service_runtime.convert import params_from_proto
from adaspec.service_runtime.engine_core import EngineCore
from adaspec.service_runtime.engine_loop import EngineLoop, EngineStepFailed, EngineStopped
from adaspec.service_runtime.link_server import serve_link
from adaspec.service_runtime.tracing import SessionSteps
from adaspec.speculation.acceptance import NUM_BINS, AcceptanceCurve
from adaspec.speculation.draft_budget import BatchGoodputRule, DraftBudget
from adaspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["Draft"].full_name


class DraftService(draft_pb2_grpc.DraftServicer):
    """`core` runs a `DraftTarget`."""

    def __init__(self, core: EngineCore, replica_id: str, address: str, max_sessions: int = 256):
        self.replica_id, self.address, self.max_sessions = replica_id, address, max_sessions
        self.model = Path(core.info.get("model_path", "")).name
        self.loop = EngineLoop(core, "draft")
        self.step_spans = SessionSteps()
        self.loop.trace_links = self.step_spans.links
        self.sessions = 0

    async def Session(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a draft session starts with an open message",
                        field="open")
        if self.sessions >= self.max_sessions:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"draft replica {self.replica_id} is full ({self.sessions} sessions)", retry_after_s=0.5)
        seq_id = None
        spans = self.step_spans.session()  # this session's key among the open step spans
        self.sessions += 1
        try:
            msg = first.open
            try:
                params = params_from_proto(msg.params, seed=msg.seed)
                seq_id = await self.loop.call(("open", (list(msg.prompt_token_ids), params, msg.seed)),
                                              undo=lambda opened: ("close", (opened,)))
            except ValueError as error:
                await context.abort_with_status(invalid_argument_from(error, "open.prompt_token_ids"))
            except KVCacheExhausted as error:
                await context.abort_with_status(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error),
                                                            retry_after_s=0.5))
            curve = None  # the session's acceptance curve, as last sent
            async for request in request_iterator:
                if request.WhichOneof("kind") != "step":
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expected a step message", field="step")
                step = request.step
                try:
                    curve, budget = budget_from_proto(step, curve)
                except ValueError as error:
                    await context.abort_with_status(invalid_argument_from(error, "step"))
                work = DraftWork(seq_id, step.num_accepted, list(step.token_ids), budget)
                sent = time.perf_counter()
                self.step_spans.start(spans, "draft step", request.traceparent, {
                    "adaspec.replica": self.replica_id, "adaspec.step.max_drafts": budget.max_tokens,
                    "adaspec.step.catch_up_tokens": len(step.token_ids)})
                try:
                    await self.loop.call(("queue", (work,)), key=seq_id)
                except ValueError as error:
                    await context.abort_with_status(invalid_argument_from(error, "step"))
                drafts, step_ms = await self.loop.result(seq_id)
                reply = draft_pb2.DraftResponse(drafts=common_pb2.DraftTokens.FromString(drafts),
                                                queue_ms=max(0.0, (time.perf_counter() - sent) * 1e3 - step_ms),
                                                step_ms=step_ms)
                self.step_spans.finish(spans, {"adaspec.step.drafts": len(reply.drafts.token_ids),
                                                "adaspec.step.step_ms": step_ms,
                                                "adaspec.step.queue_ms": reply.queue_ms})
                yield reply
        except EngineStopped as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except EngineStepFailed as error:
            await abort(context, grpc.StatusCode.INTERNAL, str(error))
        finally:
            self.sessions -= 1
            self.step_spans.close(spans, sys.exc_info()[1])
            if seq_id is not None:
                self.loop.forget(seq_id)
                self.loop.post(("close", (seq_id,)))

    async def Link(self, request_iterator, context):
        async for frames in serve_link(self.Session, draft_pb2.DraftRequest, "draft", request_iterator):
            yield frames

    async def GetLoad(self, request, context) -> common_pb2.ReplicaLoad:
        return self.snapshot().to_proto()

    def snapshot(self) -> ReplicaLoad:
        """Live load: the engine's figures are those it reported after its latest step or command batch."""
        status = self.loop.core.status
        return ReplicaLoad(
            replica_id=self.replica_id, kind="draft", pool="draft", address=self.address,
            sessions=self.sessions, queued_tokens=status["queued_tokens"], free_kv_blocks=status["free_kv_blocks"],
            total_kv_blocks=status["total_kv_blocks"], max_sessions=self.max_sessions,
            step_latency_ms=self.loop.step_latency_ms, latency_coef=status["latency_coef"],
            mean_context=status["mean_context"], step_batch=status["step_batch"], model=self.model,
        )


def budget_from_proto(step: draft_pb2.DraftStep, curve: AcceptanceCurve | None
                      ) -> tuple[AcceptanceCurve | None, DraftBudget]:
    """The step's budget, and the session's acceptance curve after it (a step without one keeps the last).
    Raises ValueError naming the field."""
    if step.acceptance_curve:
        if len(step.acceptance_curve) != NUM_BINS or not all(0.0 <= a <= 1.0 for a in step.acceptance_curve):
            raise ValueError(f"step.acceptance_curve: {NUM_BINS} acceptances in [0, 1] expected")
        curve = AcceptanceCurve(tuple(step.acceptance_curve))
    if step.max_draft_tokens < 0:
        raise ValueError(f"step.max_draft_tokens: must be >= 0, got {step.max_draft_tokens}")
    if not 0.0 <= step.min_accept_prob <= 1.0:
        raise ValueError(f"step.min_accept_prob: must be in [0, 1], got {step.min_accept_prob}")
    if step.min_accept_prob and curve is None:
        raise ValueError("step.acceptance_curve: min_accept_prob needs an acceptance curve")
    rule = None
    if step.HasField("batch_rule"):
        r = step.batch_rule
        if not (r.base_ms > 0 and r.draft_ms >= 0 and r.token_ms >= 0 and r.hop_ms >= 0):
            raise ValueError("step.batch_rule: base_ms must be > 0, draft_ms, token_ms and hop_ms >= 0")
        rule = BatchGoodputRule(r.base_ms, r.draft_ms, r.token_ms, r.hop_ms)
    return curve, DraftBudget(step.max_draft_tokens, step.min_confidence, step.min_accept_prob,
                              curve if step.min_accept_prob else None, rule)
