"""The load store's data record and interface.

Verify and draft replicas publish a `ReplicaLoad` heartbeat with a TTL; coordinators read the live
records to route requests and take short-lived *reservations* (leases) on a replica's capacity so that
several coordinators deciding at the same time cannot oversubscribe it. Two implementations share this
interface: `InProcessLoadStore` (single-node default) and `RedisLoadStore` (several processes/hosts).
"""

from __future__ import annotations

import abc

from adaspec.replica_load import ReplicaLoad

__all__ = ["LoadStore", "LoadStoreUnavailable", "ReplicaLoad", "check_duration"]


class LoadStoreUnavailable(RuntimeError):
    """The backing store cannot be reached.

    Raised instead of the client library's own exceptions so callers (coordinator, services) can map
    it to gRPC UNAVAILABLE without importing redis.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"load store at {url} is unavailable: {reason}")


def check_duration(name: str, value: float) -> int:
    """Validate a TTL/lease length and return it in whole milliseconds (at least 1).

    Both stores reject non-positive durations up front: a zero TTL would make a heartbeat vanish
    immediately, which is always a caller bug rather than a request to delete.
    """
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return max(1, round(value * 1000))


class LoadStore(abc.ABC):
    """Shared, self-expiring view of replica load plus capacity leases.

    Everything expires by itself (heartbeats after `ttl_s`, leases after `lease_s`) so that a crashed
    replica vanishes from routing and a crashed coordinator cannot leak capacity.
    """

    @abc.abstractmethod
    async def publish(self, load: ReplicaLoad, ttl_s: float) -> None:
        """Heartbeat: store `load`; it disappears by itself `ttl_s` after the last publish."""

    @abc.abstractmethod
    async def replicas(self, kind: str | None = None) -> list[ReplicaLoad]:
        """Live records only (optionally of one kind), sorted by replica_id."""

    @abc.abstractmethod
    async def remove(self, replica_id: str) -> None:
        """Graceful deregistration (drops the record and its leases); no-op if absent."""

    @abc.abstractmethod
    async def reserve(self, replica_id: str, lease_id: str, limit: int, lease_s: float) -> bool:
        """Atomically take one of `limit` slots on `replica_id` for `lease_id`.

        Returns False when `limit` live leases are already held. Re-reserving a lease that is
        already held returns True without taking another slot and renews its expiry.
        """

    @abc.abstractmethod
    async def release(self, replica_id: str, lease_id: str) -> None:
        """Give a lease back early; no-op if it is unknown or expired."""

    @abc.abstractmethod
    async def reservations(self, replica_id: str) -> int:
        """Number of live (unexpired) leases on `replica_id`."""

    async def ping(self) -> None:
        """Check the store is reachable (raises `LoadStoreUnavailable`); lets `adaspec up` fail fast."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    async def __aenter__(self) -> LoadStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
