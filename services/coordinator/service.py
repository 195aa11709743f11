"""The coordinator's public API: validate a request, route it, drive it (`RequestRun`), stream it.

Stateless apart from its connections: any number of coordinators can share one Redis load store.
Its client's deadline is honoured end to end: the remaining time bounds both session streams, and
when the call ends for any reason (finish, cancel, deadline) both sessions are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid

import grpc
from adaspec.services.coordinator.leases import Leases
from adaspec.services.coordinator.load_view import LoadView
from adaspec.services.coordinator.request import RequestRun
from adaspec.services.coordinator.request_failure import RequestFailed
from adaspec.services.coordinator.request_record import RequestSpec
from adaspec.services.coordinator.router import Router
from adaspec.services.coordinator.speculation import Steps
from opentelemetry import context as otel_context
from opentelemetry import trace

from adaspec.errors import abort, invalid_argument_from, rich_status
from adaspec.loadstore import LoadStore, LoadStoreUnavailable
from adaspec.sampling_params import MAX_SEED
from adaspec.service_runtime import tracing
from adaspec.service_runtime.convert import params_from_proto
from adaspec.service_runtime.link_client import Links
from adaspec.service_runtime.link_server import MAX_LINK_MESSAGE_BYTES
from adaspec.service_runtime.loop_lag import LoopLag
from adaspec.service_runtime.metrics import CoordinatorMetrics
from adaspec.service_runtime.server import CHANNEL_OPTIONS
from adaspec.service_runtime.transport_security import TlsFiles, channel
from adaspec.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
# Limits set on purpose (docs/limits in README): a prompt must reach a replica in one link frame, with room to spare
# for the rest of the open message; stop strings are searched on every step of the request, so they are few and
# short (OpenAI allows 4).
MAX_PROMPT_CHARS = 4 * 2**20
MAX_PROMPT_BYTES = MAX_LINK_MESSAGE_BYTES - 64 * 2**10
MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 256


def request_span(request: coordinator_pb2.GenerateRequest, spec: RequestSpec) -> trace.Span:
    """The request's span (OpenTelemetry GenAI conventions; named for the model once routed), current in this
    call's task from now on, so its logs carry its trace id. Its parent: the caller's `traceparent` field if it
    sent one, else the call's own span (the gRPC instrumentation's, from the call's metadata)."""
    if not tracing.enabled():
        return trace.INVALID_SPAN
    p = spec.params
    attributes = {"gen_ai.operation.name": "text_completion", "gen_ai.response.id": spec.request_id,
                  "gen_ai.request.max_tokens": p.max_tokens, "gen_ai.request.temperature": p.temperature,
                  "gen_ai.request.top_p": p.top_p, "gen_ai.request.seed": p.seed, "adaspec.policy": str(spec.policy)}
    if p.top_k:
        attributes["gen_ai.request.top_k"] = p.top_k
    for name, value in (("adaspec.slo.ttft_ms", spec.slo_ttft_ms), ("adaspec.slo.tpot_ms", spec.slo_tpot_ms)):
        if value is not None:
            attributes[name] = value
    span = tracing.TRACER.start_span("text_completion", context=parent_of_request(request.traceparent),
                                     attributes=attributes)
    otel_context.attach(tracing.within(span))  # never detached: the call's task (and its context) ends with it
    return span


def parent_of_request(traceparent: str) -> otel_context.Context | None:
    """The call's span (None: the current context) unless the caller's `traceparent` field names another trace: a
    caller that sets only the field has its request in its trace, under a call span that began a trace of its own."""
    named = tracing.parent_from(traceparent)
    current = trace.get_current_span().get_span_context()
    if named is not None and (not current.is_valid or current.trace_id != trace.get_current_span(
            named).get_span_context().trace_id):
        return named
    return None


class Channels:
    """One long-lived channel per downstream address, and on it one link per service (`links`) that
    carries every session of this coordinator with that replica."""

    def __init__(self, tls: TlsFiles | None = None):
        self.tls = tls  # replicas are dialed over TLS when it verifies servers (mutual TLS with its certificate)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.links = Links(self.get)

    def get(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = channel(address, self.tls, CHANNEL_OPTIONS)
        return self._channels[address]

    async def close(self) -> None:
        self.links.close()
        await asyncio.gather(*(c.close() for c in self._channels.values()))
        self._channels.clear()


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    """`view` must be started (`LoadView.start`) before requests arrive, and `leases` (`Leases.start`: their
    renewal) and `loop_lag` (`LoopLag.start`). `default_slo_ms`: (TTFT, TPOT) for requests that name none (None: no
    SLO). `max_loop_lag_s`: new requests are refused while the event loop runs this far behind (`loop_lag`; None:
    never)."""

    def __init__(self, store: LoadStore, store_name: str, channels: Channels, view: LoadView,
                 default_policy: str = "adaspec", max_spec_len: int = 8,
                 default_slo_ms: tuple[float | None, float | None] = (None, None), draft_timeout_s: float = 5.0,
                 lease_s: float = 30.0, metrics: CoordinatorMetrics | None = None,
                 max_loop_lag_s: float | None = 2.0):
        self.store, self.store_name, self.channels, self.view = store, store_name, channels, view
        self.metrics = metrics if metrics is not None else CoordinatorMetrics()
        self.steps = Steps(view, max_spec_len)
        self.steps.policy(default_policy)  # fail at start-up, not on the first request
        self.leases = Leases(store, lease_s, renew_s=lease_s / 3)
        self.router = Router(self.leases, view, max_spec_len)
        self.default_policy, self.max_spec_len = default_policy, max_spec_len
        self.default_ttft_ms, self.default_tpot_ms = default_slo_ms
        self.draft_timeout_s = draft_timeout_s
        self.in_flight = 0
        self._seeds = random.Random()
        self.loop_lag, self.max_loop_lag_s = LoopLag(), max_loop_lag_s
        self.shedding = False  # refusing new requests: the event loop is behind (logged when it starts and ends)

    async def Generate(self, request: coordinator_pb2.GenerateRequest, context):
        behind_s = self.loop_lag.behind_s()
        shedding = self.max_loop_lag_s is not None and behind_s > self.max_loop_lag_s
        if shedding != self.shedding:
            self.shedding = shedding
            if shedding:
                log.warning("refusing new requests: the event loop runs behind", extra={"behind_s": round(behind_s, 2)})
            else:
                log.info("taking new requests again: the event loop caught up")
        if shedding:
            await context.abort_with_status(rich_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"the coordinator is overloaded (its event loop runs "
                f"{behind_s:.1f} s behind; at most {self.max_loop_lag_s:g} s); retry later", retry_after_s=1.0))
        spec = await self._validate(request, context)
        span = request_span(request, spec)
        self.in_flight += 1
        try:
            # aclosing: however this call ends (a cancel lands while a response is being written, not in
            # the run), the run's own cleanup closes both sessions now, not when the generator is collected
            run = RequestRun(spec, self.router, self.channels, self.max_spec_len, self.steps, self.metrics,
                             self.draft_timeout_s, span)
            async with contextlib.aclosing(run.run()) as responses:
                async for response in responses:
                    yield response
            span.end()
        except RequestFailed as failure:
            tracing.end_with_error(span, failure.status.code.name, failure.status.details)
            await context.abort_with_status(failure.status)
        except BaseException as error:  # cancelled (the client went, or its deadline passed), or a fault
            # a cancel that lands while a response is being written closes this generator instead (GeneratorExit)
            cancelled = isinstance(error, asyncio.CancelledError | GeneratorExit)
            tracing.end_with_error(span, "CancelledError" if cancelled else type(error).__name__, str(error))
            raise
        finally:
            self.in_flight -= 1

    async def _validate(self, request: coordinator_pb2.GenerateRequest, context) -> RequestSpec:
        if bool(request.prompt) == bool(request.prompt_token_ids):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "give exactly one of prompt and prompt_token_ids" if request.prompt else "prompt is empty",
                        field="prompt")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"prompt has {len(request.prompt)} characters; at most {MAX_PROMPT_CHARS}", field="prompt")
        if len(request.prompt.encode()) > MAX_PROMPT_BYTES or 5 * len(request.prompt_token_ids) > MAX_PROMPT_BYTES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"prompt is over {MAX_PROMPT_BYTES} bytes encoded", field="prompt")
        stops = request.params.stop
        if len(stops) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stops):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_CHARS} characters each; got "
                        f"{len(stops)}, the longest {max(map(len, stops))}", field="params.stop")
        if any(t < 0 for t in request.prompt_token_ids):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "token ids must be >= 0", field="prompt_token_ids")
        try:
            params = params_from_proto(request.params)
        except ValueError as error:
            await context.abort_with_status(invalid_argument_from(error, "params"))
        if params.seed is None:  # resolved here, so the draft and verify sessions draw from the same stream
            params.seed = self._seeds.randrange(MAX_SEED)
        try:
            policy = self.steps.policy(request.policy or self.default_policy)
        except ValueError as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), field="policy")
        slo = request.slo
        for name in ("ttft_ms", "tpot_ms"):
            if slo.HasField(name) and not getattr(slo, name) > 0:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"must be > 0, got {getattr(slo, name)}",
                            field=f"slo.{name}")
        remaining = context.time_remaining()
        return RequestSpec(
            request_id=request.request_id or uuid.uuid4().hex[:16],
            prompt=request.prompt or list(request.prompt_token_ids),
            params=params,
            policy=policy,
            slo_ttft_ms=slo.ttft_ms if slo.HasField("ttft_ms") else self.default_ttft_ms,
            slo_tpot_ms=slo.tpot_ms if slo.HasField("tpot_ms") else self.default_tpot_ms,
            deadline=None if remaining is None else time.monotonic() + remaining,
        )

    async def GetClusterState(self, request, context) -> coordinator_pb2.ClusterState:
        """The replicas as the load store has them now; while it is unavailable, the view requests are served
        on, and `load_store` says so."""
        store = self.store_name
        try:
            replicas = await self.store.replicas()
        except LoadStoreUnavailable:
            replicas = list(self.view.replicas.values())
            since = self.view.stale_since or self.leases.unavailable_since or time.monotonic()
            store += f" (unavailable for {time.monotonic() - since:.0f} s: serving on the last view of the replicas)"
        return coordinator_pb2.ClusterState(replicas=[r.to_proto() for r in replicas], load_store=store,
                                            default_policy=self.default_policy)

    async def drain(self) -> None:
        """Wait for in-flight requests to finish (the host bounds the wait); health is already NOT_SERVING."""
        while self.in_flight:
            await asyncio.sleep(0.05)
