"""Draft service: the draft model behind one session stream per request: on its coordinator's link (one
`Link` call carries all of a coordinator's sessions with this replica; `adaspec.serving.link_server`), or
a `Session` call of its own.

A session opens with the prompt and the request's sampling settings and seed (no reply: its prefill
happens with its first step). Each step commits what the verify pool accepted and drafts up to k tokens,
returning them with the sparse q (K <= 32 entries per token; one for greedy requests, whose q
verification ignores). All sessions share one continuous batch (`EngineLoop` over a `DraftTarget`, in
a process of its own or in a worker thread: `adaspec.serving.replica.start_engine_core`).
"""

from __future__ import annotations

import logging
import time

import grpc

from adaspec.engine.draft_engine import DraftWork
from adaspec.engine.kv_cache import KVCacheExhausted
from adaspec.errors import abort, invalid_argument_from, rich_status
from adaspec.loadstore import ReplicaLoad
from adaspec.policy import DraftBudget
from adaspec.serving.convert import params_from_proto
from adaspec.serving.engine_core import EngineCore
from adaspec.serving.engine_loop import EngineLoop, EngineStepFailed, EngineStopped
from adaspec.serving.link_server import serve_link
from adaspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["Draft"].full_name


class DraftService(draft_pb2_grpc.DraftServicer):
    """`core` runs a `DraftTarget`."""

    def __init__(self, core: EngineCore, replica_id: str, address: str, max_sessions: int = 256):
        self.replica_id, self.address, self.max_sessions = replica_id, address, max_sessions
        self.loop = EngineLoop(core, "draft")
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
            async for request in request_iterator:
                if request.WhichOneof("kind") != "step":
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expected a step message", field="step")
                step = request.step
                work = DraftWork(seq_id, step.num_accepted, list(step.token_ids),
                                 DraftBudget(step.max_draft_tokens, step.min_confidence))
                sent = time.perf_counter()
                try:
                    await self.loop.call(("queue", (work,)), key=seq_id)
                except ValueError as error:
                    await context.abort_with_status(invalid_argument_from(error, "step"))
                drafts, step_ms = await self.loop.result(seq_id)
                yield draft_pb2.DraftResponse(
                    drafts=common_pb2.DraftTokens.FromString(drafts),
                    queue_ms=max(0.0, (time.perf_counter() - sent) * 1e3 - step_ms),
                    step_ms=step_ms,
                )
        except EngineStopped as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except EngineStepFailed as error:
            await abort(context, grpc.StatusCode.INTERNAL, str(error))
        finally:
            self.sessions -= 1
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
            step_latency_ms=self.loop.step_latency_ms,
        )
