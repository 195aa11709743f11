"""The coordinator's view of the replicas: their last heartbeats, read from the load store a few times a second.

Routing and every request's per-step budget read this view instead of the store: a step must not wait for
Redis, and several thousand steps a second must not each read it. What the view derives for the
speculation core: each replica's latency model (from its published coefficients) and the global
acceptance prior (the verify replicas' calibration counts, merged). When the store cannot be read, the
last view is kept (`stale_since` says since when), so requests keep being served on it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from adaspec.loadstore import LoadStore, LoadStoreUnavailable, ReplicaLoad
from adaspec.speculation.acceptance import AcceptanceCalibrator
from adaspec.speculation.latency_profile import NUM_FEATURES, LatencyModel

log = logging.getLogger(__name__)


class LoadView:
    def __init__(self, store: LoadStore, interval_s: float = 0.25):
        self.store, self.interval_s = store, interval_s
        self.replicas: dict[str, ReplicaLoad] = {}
        self.calibrator = AcceptanceCalibrator()
        self.stale_since: float | None = None  # time.monotonic() of the first failed read since the last good one
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="load-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> None:
        """Read every live replica's heartbeat now (the view stays as it was if the store cannot be read)."""
        try:
            loads = await self.store.replicas()
        except LoadStoreUnavailable as error:
            if self.stale_since is None:
                self.stale_since = time.monotonic()
                log.warning("load store unavailable: serving on the last view of the replicas",
                            extra={"replicas": len(self.replicas), "error": error.reason})
            return
        if self.stale_since is not None:
            log.info("load store back: view refreshed",
                     extra={"stale_s": round(time.monotonic() - self.stale_since, 1)})
            self.stale_since = None
        self.replicas = {r.replica_id: r for r in loads}
        self.calibrator = AcceptanceCalibrator.from_lists(
            [r.acceptance_counts for r in loads if r.kind == "verify" and r.acceptance_counts])

    def of_kind(self, kind: str) -> list[ReplicaLoad]:
        return sorted((r for r in self.replicas.values() if r.kind == kind), key=lambda r: r.replica_id)

    def get(self, replica_id: str) -> ReplicaLoad | None:
        return self.replicas.get(replica_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()


def latency_model(load: ReplicaLoad | None) -> LatencyModel | None:
    """A replica's published latency model (None where it publishes none)."""
    if load is None or len(load.latency_coef) != NUM_FEATURES:
        return None
    return LatencyModel(tuple(load.latency_coef))
