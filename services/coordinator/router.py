"""Routing: pick a live replica of a kind and take a capacity lease on it.

Replicas come from the coordinator's `LoadView` (TTL heartbeats), so one that died drops out by itself;
one that just failed a request is also skipped locally for `suspect_s`, before its record expires.
Verify replicas are ranked by the request's predicted TTFT and TPOT on each, from its heartbeat and
latency profile (`adaspec.speculation.routing`): the one that meets the request's SLOs with the most slack
first, ties by load. Draft replicas by load. The lease is atomic across coordinators (the store's reserve),
bounded by the replica's own `max_sessions`, and expires by itself if this coordinator dies holding it
(`Leases`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from adaspec.services.coordinator.leases import Leases
from adaspec.services.coordinator.load_view import LoadView, latency_model

from adaspec.loadstore import ReplicaLoad
from adaspec.speculation import routing


class NoReplica(Exception):
    """No live replica of the kind needed (UNAVAILABLE)."""


class NoCapacity(Exception):
    """Every live replica of the kind is at capacity (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs to know of a request."""

    prompt_tokens: int
    greedy: bool
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None


class Router:
    def __init__(self, leases: Leases, view: LoadView, max_spec_len: int = 8, suspect_s: float = 5.0):
        self.leases, self.view, self.max_spec_len = leases, view, max_spec_len
        self.suspect_s = suspect_s
        self._suspect_until: dict[str, float] = {}

    async def acquire(self, kind: str, lease_id: str, exclude: set[str] = frozenset(),
                      request: RouteRequest | None = None) -> ReplicaLoad:
        live = self.live(kind, exclude)
        if not live:  # the view may be a refresh behind the store (a replica that just came up): read it now
            await self.view.refresh()
            live = self.live(kind, exclude)
        if not live:
            raise NoReplica(f"no live {kind} replica")
        # Leases count sessions being opened now, which the heartbeats do not show yet: a burst must not all
        # go to the replica that looked idlest half a second ago. This coordinator's own count too, live: the
        # requests of a burst all read the store's before any of them takes a lease.
        leases = await asyncio.gather(*(self.leases.count(r.replica_id) for r in live))
        own = self.leases.own()  # one pass over the held leases, not one per replica
        live = [dataclasses.replace(r, sessions=max(r.sessions, n, own[r.replica_id])) for r, n in zip(live, leases)]
        for replica in self.rank(kind, live, request):
            if await self.leases.take(replica.replica_id, lease_id, replica.max_sessions):
                return replica
        raise NoCapacity(f"all {len(live)} {kind} replicas are at capacity")

    def live(self, kind: str, exclude: set[str]) -> list[ReplicaLoad]:
        now = time.monotonic()
        return [r for r in self.view.of_kind(kind)
                if r.replica_id not in exclude and self._suspect_until.get(r.replica_id, 0.0) <= now]

    def rank(self, kind: str, live: list[ReplicaLoad], request: RouteRequest | None) -> list[ReplicaLoad]:
        by_load = sorted(live, key=lambda r: (r.sessions / max(r.max_sessions, 1), r.queued_tokens, r.replica_id))
        if kind != "verify" or request is None or any(latency_model(r) is None for r in live):
            return by_load
        draft = latency_model(min(self.view.of_kind("draft"), key=lambda r: r.sessions, default=None))
        predictions = [routing.predict(self.replica_view(r), request.prompt_tokens, request.greedy, draft,
                                       self.view.calibrator, self.max_spec_len, request.ttft_slo_ms,
                                       request.tpot_slo_ms) for r in live]
        by_id = {r.replica_id: r for r in live}
        return [by_id[p.replica_id] for p in routing.rank(predictions)]

    @staticmethod
    def replica_view(load: ReplicaLoad) -> routing.ReplicaView:
        return routing.ReplicaView(
            load.replica_id, load.sessions, load.max_sessions, load.queued_tokens, load.step_tokens or 1.0,
            load.tokens_per_step or 1.0, load.mean_context, latency_model(load))

    async def release(self, replica: ReplicaLoad, lease_id: str) -> None:
        await self.leases.release(replica.replica_id, lease_id)

    def mark_failed(self, replica: ReplicaLoad) -> None:
        self._suspect_until[replica.replica_id] = time.monotonic() + self.suspect_s
