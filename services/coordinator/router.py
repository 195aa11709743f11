"""Routing: pick the least-loaded live replica of a kind and take a capacity lease on it.

Replicas come from the load store (TTL heartbeats), so one that died drops out by itself; one that
just failed a request is also skipped locally for `suspect_s`, before its record expires. The lease
is atomic across coordinators (the store's reserve), bounded by the replica's own `max_sessions`,
and expires by itself if this coordinator dies holding it.
"""

from __future__ import annotations

import asyncio
import time

from adaspec.loadstore import LoadStore, ReplicaLoad


class NoReplica(Exception):
    """No live replica of the kind needed (UNAVAILABLE)."""


class NoCapacity(Exception):
    """Every live replica of the kind is at capacity (RESOURCE_EXHAUSTED)."""


class Router:
    def __init__(self, store: LoadStore, lease_s: float = 3600.0, suspect_s: float = 5.0):
        self.store, self.lease_s, self.suspect_s = store, lease_s, suspect_s
        self._suspect_until: dict[str, float] = {}

    async def acquire(self, kind: str, lease_id: str, exclude: set[str] = frozenset()) -> ReplicaLoad:
        now = time.monotonic()
        live = [r for r in await self.store.replicas(kind)
                if r.replica_id not in exclude and self._suspect_until.get(r.replica_id, 0.0) <= now]
        if not live:
            raise NoReplica(f"no live {kind} replica")
        counts = await asyncio.gather(*(self.store.reservations(r.replica_id) for r in live))  # concurrently
        loads = {r.replica_id: n for r, n in zip(live, counts)}
        ranked = sorted(live, key=lambda r: (loads[r.replica_id] / max(r.max_sessions, 1), r.queued_tokens,
                                             r.step_latency_ms, r.replica_id))
        for replica in ranked:
            if await self.store.reserve(replica.replica_id, lease_id, replica.max_sessions, self.lease_s):
                return replica
        raise NoCapacity(f"all {len(live)} {kind} replicas are at capacity")

    async def release(self, replica: ReplicaLoad, lease_id: str) -> None:
        await self.store.release(replica.replica_id, lease_id)

    def mark_failed(self, replica: ReplicaLoad) -> None:
        self._suspect_until[replica.replica_id] = time.monotonic() + self.suspect_s
