"""The load store's data record and interface.

Verify and draft replicas publish a `ReplicaLoad` heartbeat with a TTL; coordinators read the live
records to route requests and take short-lived *reservations* (leases) on a replica's capacity so that
several coordinators deciding at the same time cannot oversubscribe it. Two implementations share this
interface: `InProcessLoadStore` (single-node default) and `RedisLoadStore` (several processes/hosts).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


@dataclass
class ReplicaLoad:
    """One replica's heartbeat: what a coordinator needs to pick a replica."""

    replica_id: str          # unique per process, e.g. "verify-0"
    kind: str                # "verify" | "draft"
    pool: str                # verify pool name ("default"); drafts use "draft"
    address: str             # host:port of its gRPC server
    sessions: int = 0        # open sessions
    waiting: int = 0         # sessions queued for admission
    queued_tokens: int = 0   # prompt tokens not yet prefilled + pending verify tokens
    free_kv_blocks: int = 0
    total_kv_blocks: int = 0
    max_sessions: int = 0    # capacity: admitted + queue limit
    step_latency_ms: float = 0.0   # recent (EWMA) engine step latency
    acceptance_rate: float = 0.0   # recent (EWMA) draft acceptance
    tokens_per_step: float = 0.0
    updated_at: float = 0.0  # time.time() of the heartbeat

    def to_dict(self) -> dict[str, str]:
        """Every field as a string: the shape of a Redis hash (`repr` keeps floats exact)."""
        values = dataclasses.asdict(self)
        return {k: repr(v) if isinstance(v, float) else str(v) for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str | bytes, Any]) -> ReplicaLoad:
        """Inverse of `to_dict`; accepts str or bytes keys/values, ignores unknown keys.

        Unknown keys are ignored so that a newer replica publishing an extra field does not break an
        older coordinator during a rolling upgrade; missing optional fields take their defaults.
        """
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            conv = _CONVERTERS.get(name)
            if conv is None:
                continue
            text = value.decode() if isinstance(value, bytes) else value
            kwargs[name] = conv(text)
        return cls(**kwargs)


# field name -> converter from its string form, from the annotations (strings under `annotations`).
_CONVERTERS: dict[str, type] = {
    f.name: {"int": int, "float": float, "str": str}[str(f.type)] for f in dataclasses.fields(ReplicaLoad)}


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
