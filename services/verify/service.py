"""Verify service: the target model behind one session stream per request: on its coordinator's link (one
`Link` call carries all of a coordinator's sessions with this replica; `adaspec.service_runtime.link_server`), or
a `Session` call of its own.

A session opens with the prompt (the reply carries the first token, sampled from p after prefill),
then brings one set of drafts per step (the reply carries the accepted drafts and the target's token).
All sessions of all coordinators share one continuous batch (`EngineLoop` over `VerifyEngine`).
Steps are read as they arrive, apart from the replies: a step without drafts that the coordinator sent
ahead joins the engine step right after the current one, while the current one's reply is written.
Whatever ends the stream (finish, half-close, cancel, deadline, a coordinator that vanished) closes
the session and returns its KV blocks. The engine runs behind an `EngineCore` as a `VerifyTarget`: in a
process of its own or in a worker thread (`adaspec.service_runtime.replica.start_engine_core`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import grpc
from adaspec.services.verify.verify_target import OpenedSession, SessionFinished

from adaspec.engine.kv_cache import KVCacheExhausted
from adaspec.errors import abort, invalid_argument_from, rich_status
from adaspec.loadstore import ReplicaLoad
from adaspec.sampling_params import SamplingParams
from adaspec.service_runtime.convert import params_from_proto
from adaspec.service_runtime.engine_core import EngineCore
from adaspec.service_runtime.engine_loop import EngineLoop, EngineStepFailed, EngineStopped
from adaspec.service_runtime.heartbeat import Ewma
from adaspec.service_runtime.link_server import serve_link
from adaspec.service_runtime.streaming_detokenizer import StreamingDetokenizer
from adaspec.service_runtime.tracing import SessionSteps
from adaspec.v1 import common_pb2, verify_pb2, verify_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = verify_pb2.DESCRIPTOR.services_by_name["Verify"].full_name
MAX_STEPS_IN_FLIGHT = 2  # per session: the step being verified and one sent ahead; reading waits beyond


class StepRefused(Exception):
    """A session's step message was refused: end the call with `status`."""

    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


class VerifyService(verify_pb2_grpc.VerifyServicer):
    """`core` runs a `VerifyTarget`; `tokenizer`: the target's (for the streamed text)."""

    def __init__(self, core: EngineCore, tokenizer, replica_id: str, pool: str, address: str, max_waiting: int = 64):
        self.tokenizer, self.max_model_len = tokenizer, core.info["max_model_len"]
        self.replica_id, self.pool, self.address = replica_id, pool, address
        self.model = Path(core.info.get("model_path", "")).name
        self.max_sessions = core.info["max_num_seqs"] + max_waiting
        self.loop = EngineLoop(core, "verify")
        self.step_spans = SessionSteps()
        self.loop.trace_links = self.step_spans.links
        self.sessions = 0
        self.acceptance, self.tokens_per_step = Ewma(), Ewma()

    async def Session(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a verify session starts with an open message",
                        field="open")
        if self.sessions >= self.max_sessions:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"verify replica {self.replica_id} is full ({self.sessions} sessions)", retry_after_s=0.5)
        seq_id, reader = None, None
        spans = self.step_spans.session()  # this session's key among the open step spans
        self.sessions += 1
        try:
            self.step_spans.start(spans, "verify open", first.traceparent, {"adaspec.replica": self.replica_id})
            params, opened = await self._open(first.open, context)
            seq_id = opened.seq_id
            text = StreamingDetokenizer(self.tokenizer, params.stop)
            if first.open.output_token_ids:
                text.resume(list(first.open.output_token_ids), first.open.output_chars_sent)
            reply = await self._next_reply(seq_id, text, time.perf_counter(), drafted=None)
            reply.prompt_token_ids[:] = opened.prompt_token_ids
            self.step_spans.finish(spans, {"gen_ai.usage.input_tokens": len(opened.prompt_token_ids)})
            yield reply
            steps, in_flight = asyncio.Queue(), asyncio.Semaphore(MAX_STEPS_IN_FLIGHT)
            reader = asyncio.create_task(self._read_steps(seq_id, spans, request_iterator, steps, in_flight))
            while not reply.finish_reason:
                step = await steps.get()
                if step is None:
                    break  # the coordinator half-closed
                if isinstance(step, BaseException):
                    raise step
                sent, drafted = step
                reply = await self._next_reply(seq_id, text, sent, drafted)
                in_flight.release()
                self.step_spans.finish(spans, {"adaspec.step.accepted": reply.num_accepted,
                                                "adaspec.step.tokens": len(reply.token_ids),
                                                "adaspec.step.step_ms": reply.step_ms,
                                                "adaspec.step.queue_ms": reply.queue_ms})
                yield reply
        except StepRefused as error:
            await context.abort_with_status(error.status)
        except EngineStopped as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except EngineStepFailed as error:
            await abort(context, grpc.StatusCode.INTERNAL, str(error))
        finally:
            if reader is not None:
                reader.cancel()
            self.sessions -= 1
            self.step_spans.close(spans, sys.exc_info()[1])
            if seq_id is not None:
                self.loop.forget(seq_id)
                self.loop.post(("close", (seq_id,)))

    async def _read_steps(self, seq_id: int, spans: int, requests, steps: asyncio.Queue,
                          in_flight: asyncio.Semaphore) -> None:
        """Queue each step in the engine as it arrives and put (arrival time, number of drafts) on `steps`;
        at the end put None (half-close) or the exception that ends the call."""
        try:
            async for request in requests:
                if request.WhichOneof("kind") != "step":
                    raise StepRefused(rich_status(grpc.StatusCode.INVALID_ARGUMENT, "expected a step message",
                                                  field="step"))
                sent = time.perf_counter()
                await in_flight.acquire()
                self.step_spans.start(spans, "verify step", request.traceparent, {
                    "adaspec.replica": self.replica_id, "adaspec.step.drafts": len(request.step.token_ids)})
                try:
                    await self.loop.call(("submit", (seq_id, request.step.SerializeToString())), key=seq_id)
                except ValueError as error:
                    raise StepRefused(invalid_argument_from(error, "step")) from error
                steps.put_nowait((sent, len(request.step.token_ids)))
            steps.put_nowait(None)
        except SessionFinished:
            pass  # the final reply ends the call
        except Exception as error:  # noqa: BLE001 - handed to the call's handler, which ends the call with it
            steps.put_nowait(error)

    def _tokenize(self, prompt: str) -> list[int]:
        """The engine's tokenization (`Engine.add_request`); a prompt over the context is refused here."""
        token_ids = self.tokenizer(prompt)["input_ids"]
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens; the context is {self.max_model_len} tokens and the "
                             f"prompt must leave room for at least one new token")
        return token_ids

    async def _open(self, msg: verify_pb2.VerifyOpen, context) -> tuple[SamplingParams, OpenedSession]:
        if bool(msg.prompt) == bool(msg.prompt_token_ids):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of prompt and prompt_token_ids",
                        field="prompt")
        for name in ("ttft_ms", "tpot_ms"):
            if not getattr(msg, name) >= 0:  # NaN too
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                            f"{name} must be >= 0 (0: no SLO), got {getattr(msg, name)}", field=name)
        try:
            params = params_from_proto(msg.params, seed=msg.seed)
            if params.max_tokens >= self.max_model_len:
                raise ValueError(f"SamplingParams.max_tokens must be below the context of "
                                 f"{self.max_model_len} tokens, got {params.max_tokens}")
            prompt = list(msg.prompt_token_ids)
            if msg.prompt:  # tokenized here, not in the engine between two steps: a long prompt would pause them all
                prompt = await asyncio.to_thread(self._tokenize, msg.prompt)
            return params, await self.loop.call(("open", (prompt, params, list(msg.output_token_ids),
                                                          msg.ttft_ms or None, msg.tpot_ms or None)),
                                                undo=lambda opened: ("close", (opened.seq_id,)))
        except ValueError as error:
            await context.abort_with_status(invalid_argument_from(error, "prompt"))
        except KVCacheExhausted as error:
            await context.abort_with_status(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error),
                                                        field="params.max_tokens"))

    async def _next_reply(self, seq_id: int, text: StreamingDetokenizer, sent: float,
                          drafted: int | None) -> verify_pb2.VerifyResponse:
        """`drafted`: the step's number of draft tokens (None for the reply to an open: no step)."""
        result, step_ms = await self.loop.result(seq_id)
        if drafted is not None:
            self.tokens_per_step.add(len(result.token_ids))
            if drafted:  # a step without drafts says nothing about acceptance
                self.acceptance.add(result.num_accepted / drafted)
        finished = result.finish_reason is not None
        return verify_pb2.VerifyResponse(
            token_ids=result.token_ids,
            num_accepted=result.num_accepted,
            text=text.add(result.token_ids, finished, result.stop_text_index),
            finish_reason=result.finish_reason or "",
            max_draft_tokens=result.max_draft_tokens,
            queue_ms=max(0.0, (time.perf_counter() - sent) * 1e3 - step_ms),
            step_ms=step_ms,
        )

    async def Link(self, request_iterator, context):
        async for frames in serve_link(self.Session, verify_pb2.VerifyRequest, "verify", request_iterator):
            yield frames

    async def GetLoad(self, request, context) -> common_pb2.ReplicaLoad:
        return self.snapshot().to_proto()

    def snapshot(self) -> ReplicaLoad:
        """Live load: the engine's figures are those it reported after its latest step or command batch."""
        status = self.loop.core.status
        return ReplicaLoad(
            replica_id=self.replica_id, kind="verify", pool=self.pool, address=self.address,
            sessions=self.sessions, free_kv_blocks=status["free_kv_blocks"], total_kv_blocks=status["total_kv_blocks"],
            max_sessions=self.max_sessions, step_latency_ms=self.loop.step_latency_ms,
            acceptance_rate=self.acceptance.value, tokens_per_step=self.tokens_per_step.value,
            waiting=status["waiting"], queued_tokens=status["queued_tokens"], latency_coef=status["latency_coef"],
            acceptance_counts=status["acceptance_counts"], mean_context=status["mean_context"],
            step_tokens=status["step_tokens"], step_batch=status["step_batch"], model=self.model,
        )
