"""In-process load store: the embedded default for a single-node run.

Same semantics as the Redis store (TTL heartbeats, expiring leases) so the coordinator's code path is
identical whichever store is configured, and tests can run the same cases against both.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from adaspec.loadstore.base import LoadStore, ReplicaLoad, check_duration

__all__ = ["InProcessLoadStore"]


class InProcessLoadStore(LoadStore):
    """Dictionaries guarded by a lock, with lazy expiry on a monotonic clock.

    Each method body runs without awaiting, so it is atomic with respect to other coroutines on the
    loop; the lock additionally makes it safe when services call it from worker threads. The clock is
    monotonic so that wall-clock jumps (NTP) cannot resurrect or prematurely expire records, and it is
    injectable so tests can advance time without sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, tuple[ReplicaLoad, float]] = {}   # id -> (load, expires_at)
        self._leases: dict[str, dict[str, float]] = {}             # id -> {lease_id: expires_at}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("InProcessLoadStore is closed")

    def _live_leases(self, replica_id: str, now: float) -> dict[str, float]:
        """The replica's leases with expired ones dropped (lazy expiry, like ZREMRANGEBYSCORE)."""
        leases = self._leases.get(replica_id)
        if leases is None:
            return {}
        for lease_id in [k for k, exp in leases.items() if exp <= now]:
            del leases[lease_id]
        if not leases:
            del self._leases[replica_id]
            return {}
        return leases

    async def publish(self, load: ReplicaLoad, ttl_s: float) -> None:
        ttl_ms = check_duration("ttl_s", ttl_s)
        record = dataclasses.replace(load, updated_at=load.updated_at or time.time())
        with self._lock:
            self._check_open()
            self._records[load.replica_id] = (record, self._clock() + ttl_ms / 1000)

    async def replicas(self, kind: str | None = None) -> list[ReplicaLoad]:
        with self._lock:
            self._check_open()
            now = self._clock()
            for replica_id in [k for k, (_, exp) in self._records.items() if exp <= now]:
                del self._records[replica_id]
            live = [dataclasses.replace(load) for load, _ in self._records.values()
                    if kind is None or load.kind == kind]
        return sorted(live, key=lambda r: r.replica_id)

    async def remove(self, replica_id: str) -> None:
        with self._lock:
            self._check_open()
            self._records.pop(replica_id, None)
            self._leases.pop(replica_id, None)

    async def reserve(self, replica_id: str, lease_id: str, limit: int, lease_s: float) -> bool:
        lease_ms = check_duration("lease_s", lease_s)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        with self._lock:
            self._check_open()
            now = self._clock()
            leases = self._live_leases(replica_id, now)
            if lease_id not in leases and len(leases) >= limit:
                return False
            self._leases.setdefault(replica_id, leases)[lease_id] = now + lease_ms / 1000
            return True

    async def release(self, replica_id: str, lease_id: str) -> None:
        with self._lock:
            self._check_open()
            leases = self._live_leases(replica_id, self._clock())
            leases.pop(lease_id, None)
            if not leases:
                self._leases.pop(replica_id, None)

    async def reservations(self, replica_id: str) -> int:
        with self._lock:
            self._check_open()
            return len(self._live_leases(replica_id, self._clock()))

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            self._records.clear()
            self._leases.clear()
