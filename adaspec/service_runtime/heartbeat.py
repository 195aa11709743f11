"""A replica's heartbeat: its live load, published to the load store with a TTL, so a dead replica drops out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from adaspec.loadstore import LoadStore, LoadStoreUnavailable, ReplicaLoad

log = logging.getLogger(__name__)


class Heartbeat:
    """Publishes `snapshot()` every `interval_s` with a TTL of `ttl_s`; deregisters on stop."""

    def __init__(self, store: LoadStore | None, snapshot: Callable[[], ReplicaLoad], interval_s: float = 0.5,
                 ttl_s: float = 3.0):
        assert ttl_s > interval_s > 0
        self.store, self.snapshot = store, snapshot
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.store is not None:
            self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Stop publishing and remove the record now (a draining replica takes no new sessions)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(LoadStoreUnavailable):
            await self.store.remove(self.snapshot().replica_id)

    async def _run(self) -> None:
        while True:
            load = self.snapshot()
            load.updated_at = time.time()
            try:
                await self.store.publish(load, self.ttl_s)
            except LoadStoreUnavailable as error:  # keep serving; coordinators will see us again when it is back
                log.warning("heartbeat not published", extra={"error": str(error)})
            await asyncio.sleep(self.interval_s)


class Ewma:
    """Exponentially weighted mean of recent values (for step latency, acceptance, tokens per step)."""

    def __init__(self, weight: float = 0.1):
        self.weight, self.value, self.count = weight, 0.0, 0

    def add(self, value: float) -> None:
        self.value = value if self.count == 0 else (1 - self.weight) * self.value + self.weight * value
        self.count += 1
