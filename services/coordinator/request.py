"""One request's life in the coordinator, step by step:

    open     lease the verify replica that best meets the request's SLOs, open its session: prefill, the
             first token (another replica if it fails)
    propose  the request's policy gives this step's draft budget (`adaspec.services.coordinator.speculation`); if it
             allows drafts, ask the draft session to commit what was accepted and draft within it, before the
             client is written to, so the draft works meanwhile; at k = 0 the draft is not asked at all
    verify   the verify session checks them: accepted drafts, then the target's own token
    stream   yield the committed tokens and text to the client
    close    half-close both sessions (cancel them on error), release both leases

The draft is an accelerator, never a dependency: if its replica is full, fails, stalls (no drafts within
`draft_timeout_s`) or falls behind the context, the request goes on at k = 0 (still exact: every token comes
from the verify pool).
A verify replica that becomes unavailable mid-request is replaced: the request reopens on another
replica with the tokens committed so far and goes on from there, still lossless (greedy output is the
same token for token; sampled output keeps the target's distribution). The failed step's drafts are dropped.

Its sessions with the replicas are `replica_session`'s, the status it fails with `request_failure`'s, and what it asked
for and has done, with how that is reported, `request_record`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import AsyncIterator

import grpc
from adaspec.services.coordinator.replica_session import Session, open_session
from adaspec.services.coordinator.request_failure import PASS_THROUGH, RequestFailed, downstream_status
from adaspec.services.coordinator.request_record import Counters, RequestSpec, finished_attributes, request_stats
from adaspec.services.coordinator.router import Router, RouteRequest
from adaspec.services.coordinator.speculation import RequestSpeculation, Steps
from opentelemetry import trace

from adaspec.service_runtime import tracing
from adaspec.service_runtime.convert import params_to_proto
from adaspec.service_runtime.metrics import CoordinatorMetrics
from adaspec.speculation.step_state import RequestState
from adaspec.v1 import common_pb2, coordinator_pb2, draft_pb2, verify_pb2

log = logging.getLogger(__name__)


class RequestRun:
    def __init__(self, spec: RequestSpec, router: Router, channels, max_spec_len: int, steps: Steps,
                 metrics: CoordinatorMetrics, draft_timeout_s: float = 5.0, span: trace.Span = trace.INVALID_SPAN):
        """`span`: the request's (its steps are its children; it is the caller's to end)."""
        self.spec, self.router, self.channels, self.max_spec_len = spec, router, channels, max_spec_len
        self.metrics, self.draft_timeout_s, self.span = metrics, draft_timeout_s, span
        self.counters = Counters()
        self.verify: Session | None = None
        self.draft: Session | None = None
        self.failed_verify: set[str] = set()  # verify replicas that failed or refused this request
        p = spec.params
        state = RequestState(context_tokens=0, output_tokens=0, remaining_tokens=p.max_tokens, greedy=p.greedy,
                             ttft_slo_s=None if spec.slo_ttft_ms is None else spec.slo_ttft_ms / 1e3,
                             tpot_slo_s=None if spec.slo_tpot_ms is None else spec.slo_tpot_ms / 1e3)
        self.speculation = RequestSpeculation(steps, spec.policy, state, p.max_tokens)
        self.asked_draft = False  # the draft session was asked for this step's drafts
        self.step_span: trace.Span | None = None  # the step whose verify reply comes next, once started
        self.step_k = 0  # its draft budget
        self.step_index = itertools.count(1)
        self.draft_failed = False  # in this step
        self.next_plain = False  # the next step will not draft either: it may go ahead of this one's reply

    async def run(self) -> AsyncIterator[coordinator_pb2.GenerateResponse]:
        ok = False
        try:
            reply = await self.open_verify()
            self.counters.prompt_token_ids = list(reply.prompt_token_ids)
            self.speculation.state.context_tokens = len(reply.prompt_token_ids)
            self.speculation.committed(list(reply.token_ids), 0, [])
            yield self.stream(reply)
            if self.spec.policy.uses_draft and not reply.finish_reason:
                await self.open_draft(self.counters.prompt_token_ids)
                await self.propose(reply)
            while not reply.finish_reason:
                drafts = await self.drafts()
                reply, tested = await self.verify_step(drafts)
                self.speculation.committed(list(reply.token_ids), reply.num_accepted, tested, self.asked_draft)
                message = self.stream(reply)
                if not reply.finish_reason:
                    await self.propose(reply)  # before the client write: the draft works meanwhile
                yield message
            ok = True
        finally:  # concurrently: a cancel landing in one close must not skip the other
            if self.step_span is not None:
                error = sys.exc_info()[1]
                if error is None or isinstance(error, GeneratorExit):
                    self.step_span.end()
                else:
                    tracing.end_with_error(self.step_span, type(error).__name__, str(error))
            self.speculation.close()
            await asyncio.gather(*(s.close(ok) for s in (self.draft, self.verify) if s is not None))

    # ---- steps ----------------------------------------------------------------------------------

    async def open_verify(self) -> verify_pb2.VerifyResponse:
        """Prefill on the least-loaded verify replica that has not failed or refused this request (one that
        fails now is skipped too); with tokens already committed, the session resumes after them."""
        spec, c, tried = self.spec, self.counters, self.failed_verify
        open_message = verify_pb2.VerifyRequest(
            open=verify_pb2.VerifyOpen(request_id=spec.request_id, params=params_to_proto(spec.params),
                                       seed=spec.params.seed, output_token_ids=c.output_ids,
                                       output_chars_sent=c.text_chars, ttft_ms=spec.slo_ttft_ms or 0.0,
                                       tpot_ms=spec.slo_tpot_ms or 0.0),
        )
        if c.output_ids:  # a resumed session takes the prompt as tokenised by the first replica
            open_message.open.prompt_token_ids[:] = c.prompt_token_ids
        elif isinstance(spec.prompt, str):
            open_message.open.prompt = spec.prompt
        else:
            open_message.open.prompt_token_ids[:] = spec.prompt
        refusal: grpc.Status | None = None  # the last replica's refusal for capacity
        while True:
            try:
                self.verify = await self._open("verify", tried)
            except RequestFailed as error:  # none left to try: if they refused, say why (not "no replica")
                if refusal is not None and error.status.code is grpc.StatusCode.UNAVAILABLE:
                    raise RequestFailed(refusal) from error
                raise
            self.speculation.on_verify(self.verify.replica.replica_id)
            if self.verify.replica.model:
                self.span.update_name(f"text_completion {self.verify.replica.model}")
                self.span.set_attribute("gen_ai.request.model", self.verify.replica.model)
            open_message.traceparent = tracing.traceparent(self.span)
            try:
                return await self.verify.exchange(open_message)
            except grpc.aio.AioRpcError as error:
                await self.verify.close(ok=False)
                failed, self.verify = self.verify.replica, None
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise RequestFailed(downstream_status(error, failed)) from error
                if error.code() is grpc.StatusCode.UNAVAILABLE:
                    self.router.mark_failed(failed)
                if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusal = downstream_status(error, failed)
                tried.add(failed.replica_id)
                log.warning("verify open failed; trying another replica",
                            extra={"request_id": spec.request_id, "replica": failed.replica_id,
                                   "code": error.code().name})

    async def open_draft(self, prompt_token_ids: list[int]) -> None:
        spec = self.spec
        try:
            self.draft = await self._open("draft", set())
            self.speculation.draft_id = self.draft.replica.replica_id
            await self.draft.call.write(draft_pb2.DraftRequest(
                open=draft_pb2.DraftOpen(request_id=spec.request_id, prompt_token_ids=prompt_token_ids,
                                         params=params_to_proto(spec.params), seed=spec.params.seed),
            ))
        except (RequestFailed, grpc.aio.AioRpcError) as error:
            await self._drop_draft(error)

    async def propose(self, reply: verify_pb2.VerifyResponse) -> None:
        """The policy's budget for the next step (capped by the room left); unless it is 0, ask the draft to
        commit what it has not seen and draft within it; `drafts()` reads them. A step at k = 0 that went ahead
        of this reply is the next step already: the budget then only says whether the one after may go ahead
        too (switching back to drafting costs one step at k = 0, never a round trip per step)."""
        self.asked_draft = False
        if self.draft is None:
            return
        budget = self.speculation.budget(min(reply.max_draft_tokens, self.max_spec_len))
        self.next_plain = not budget.max_tokens
        if self.next_plain or self.verify.sent_ahead:
            return  # k = 0: the draft is not asked; it catches up when it next drafts
        catch_up = self.speculation.take_catch_up()
        step = draft_pb2.DraftStep(num_accepted=catch_up.num_accepted, token_ids=catch_up.token_ids,
                                   max_draft_tokens=budget.max_tokens, min_confidence=budget.min_confidence,
                                   min_accept_prob=budget.min_accept_prob,
                                   acceptance_curve=self.speculation.curve_update(budget))
        if budget.batch_rule is not None:
            rule = budget.batch_rule
            step.batch_rule.CopyFrom(common_pb2.BatchGoodputRule(base_ms=rule.base_ms, draft_ms=rule.draft_ms,
                                                                 token_ms=rule.token_ms, hop_ms=rule.hop_ms))
        self.step_span, self.step_k = self._start_step(budget.max_tokens), budget.max_tokens
        try:
            await self.draft.call.write(draft_pb2.DraftRequest(step=step,
                                                               traceparent=tracing.traceparent(self.step_span)))
            self.asked_draft = True
        except grpc.aio.AioRpcError as error:
            await self._drop_draft(error)

    async def drafts(self) -> common_pb2.DraftTokens:
        """The drafts asked for by `propose` (none at k = 0, without a draft session, or when it just failed)."""
        if self.draft is None or not self.asked_draft:
            return common_pb2.DraftTokens()
        try:
            reply = await asyncio.wait_for(self.draft.receive(), self.draft_timeout_s)
            return reply.drafts
        except TimeoutError:
            await self._drop_draft(grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                details=f"draft replica {self.draft.replica.replica_id} gave no drafts in {self.draft_timeout_s:g} s"))
        except grpc.aio.AioRpcError as error:
            await self._drop_draft(error)
        return common_pb2.DraftTokens()

    async def verify_step(self, drafts: common_pb2.DraftTokens) -> tuple[verify_pb2.VerifyResponse, list[float]]:
        """The verify reply, and the confidences of the drafts it tested (none when the step was lost and the
        request resumed on another replica)."""
        span = self.step_span if self.step_span is not None else self._start_step(0)
        k, self.step_span, self.step_k = self.step_k, None, 0
        message = verify_pb2.VerifyRequest(step=drafts, traceparent=tracing.traceparent(span))
        try:
            # A step without drafts followed by another (no draft session, or a policy at k = 0): the next one goes
            # out now, so the replica finds it waiting instead of waiting a round trip through the coordinator.
            ahead = None
            if self.draft is None or (not drafts.token_ids and self.next_plain):
                self.step_span = self._start_step(0)
                ahead = verify_pb2.VerifyRequest(step=drafts, traceparent=tracing.traceparent(self.step_span))
            reply = await self.verify.exchange(message, next_message=ahead)
        except grpc.aio.AioRpcError as error:
            tracing.end_with_error(span, error.code().name, error.details() or "")
            replica = self.verify.replica
            if error.code() not in PASS_THROUGH and error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                self.router.mark_failed(replica)
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise RequestFailed(downstream_status(error, replica, self.counters.output_tokens)) from error
            return await self.resume_verify(error), []
        if span.is_recording():
            span.set_attributes({
                "adaspec.step.drafts": len(drafts.token_ids), "adaspec.step.accepted": reply.num_accepted,
                "adaspec.step.tokens": len(reply.token_ids), "adaspec.step.stop": self._why_drafting_stopped(k, drafts),
                "adaspec.step.verify_ms": reply.step_ms, "adaspec.step.verify_queue_ms": reply.queue_ms,
                **({"adaspec.step.predicted_ms": self.speculation.forwards.ms(len(drafts.token_ids))}
                   if self.speculation.forwards is not None else {})})
        span.end()
        self.draft_failed = False
        c = self.counters
        c.steps += 1
        c.draft_tokens += len(drafts.token_ids)
        c.accepted_tokens += reply.num_accepted
        self.metrics.step(self.verify.replica.pool, str(self.spec.policy), len(drafts.token_ids), reply.num_accepted)
        return reply, list(drafts.confidences)

    async def resume_verify(self, failure: grpc.aio.AioRpcError) -> verify_pb2.VerifyResponse:
        """The verify replica became unavailable mid-request: reopen on another with the committed tokens.
        The reply is the resumed session's first token (no drafts accepted: the failed step's are dropped)."""
        failed = self.verify.replica
        await self.verify.close(ok=False)
        self.verify = None
        self.speculation.on_verify(None)
        self.failed_verify.add(failed.replica_id)
        log.warning("verify replica failed mid-request; resuming on another",
                    extra={"request_id": self.spec.request_id, "replica": failed.replica_id,
                           "tokens": self.counters.output_tokens, "code": failure.code().name})
        try:
            reply = await self.open_verify()
        except RequestFailed as error:
            if error.status.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
            # no replica to go on with: report the failure itself
            raise RequestFailed(downstream_status(failure, failed, self.counters.output_tokens)) from failure
        self.counters.resumed += 1
        return reply

    def stream(self, reply: verify_pb2.VerifyResponse) -> coordinator_pb2.GenerateResponse:
        c = self.counters
        if c.first_token is None:
            c.first_token = time.perf_counter()
        c.output_ids += reply.token_ids
        c.text_chars += len(reply.text)
        message = coordinator_pb2.GenerateResponse(token_ids=reply.token_ids, text=reply.text)
        if reply.finish_reason:
            message.finish_reason = reply.finish_reason
            message.stats.CopyFrom(self.stats())
            stats = message.stats
            tpot_s = stats.tpot_ms / 1e3 if c.output_tokens > 1 else None
            self.metrics.finished(stats.policy, stats.ttft_ms / 1e3, tpot_s, time.perf_counter() - c.start,
                                  stats.slo_met)
            if self.span.is_recording():
                self.span.set_attributes(finished_attributes(stats, reply.finish_reason,
                                                             self.verify.replica.model if self.verify else ""))
        return message

    # ---- helpers --------------------------------------------------------------------------------

    def _start_step(self, k: int) -> trace.Span:
        """A speculation step's span, a child of the request's, with the decision: the policy and its budget."""
        if not tracing.enabled():
            return trace.INVALID_SPAN
        return tracing.TRACER.start_span("speculation step", context=tracing.within(self.span), attributes={
            "adaspec.policy": str(self.spec.policy), "adaspec.step.k": k,
            "adaspec.step.index": next(self.step_index)})

    def _why_drafting_stopped(self, k: int, drafts: common_pb2.DraftTokens) -> str:
        """k_0: the policy gave no budget; max_tokens: the drafts reached it; stop_rule: the budget's stop rule
        (confidence, acceptance probability or the batch rule) ended them first; no_draft: the request runs
        without a draft replica; draft_failed: the draft replica failed or stalled in this step."""
        if self.draft_failed:
            return "draft_failed"
        if self.draft is None:
            return "no_draft"
        if k == 0:
            return "k_0"
        return "max_tokens" if len(drafts.token_ids) >= k else "stop_rule"

    async def _open(self, kind: str, exclude: set[str]) -> Session:
        spec = self.spec
        route = RouteRequest(spec.prompt_tokens + self.counters.output_tokens, spec.params.greedy, spec.slo_ttft_ms,
                             spec.slo_tpot_ms)
        return await open_session(self.router, self.channels.links, kind, spec.request_id, exclude, route,
                                  spec.deadline)

    async def _drop_draft(self, error: Exception) -> None:
        rpc = isinstance(error, grpc.aio.AioRpcError)
        code, reason = (error.code(), error.details()) if rpc else (error.status.code, str(error))
        log.warning("continuing without speculation",
                    extra={"request_id": self.spec.request_id, "reason": reason, "code": code.name})
        if self.draft is not None:
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):  # gone or stalled
                self.router.mark_failed(self.draft.replica)
            await self.draft.close(ok=False)
        self.draft = None
        self.speculation.draft_id = None
        self.draft_failed = True

    def stats(self) -> coordinator_pb2.RequestStats:
        return request_stats(self.spec, self.counters, self.verify.replica.replica_id if self.verify else "",
                             self.draft.replica.replica_id if self.draft else "", tracing.trace_id(self.span))
