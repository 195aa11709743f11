"""Redis-backed load store, shared by every replica and coordinator of a deployment.

Layout (all under `prefix`):
  {prefix}:replica:{id}   hash of ReplicaLoad.to_dict(), PEXPIRE ttl  -> the heartbeat
  {prefix}:replicas       sorted set: replica id scored by its expiry  -> index, so listing never SCANs
                          a shared keyspace; the hash's own TTL stays the source of truth
  {prefix}:leases:{id}    sorted set: lease id scored by its expiry    -> capacity reservations

Clock choice: every expiry score is computed inside Lua from the Redis server's TIME, never from the
client's clock. Coordinators and replicas run on different hosts; with client clocks a host running
fast would expire other coordinators' leases early (oversubscribing a replica) and a slow one would
keep dead leases alive. One clock (the server's) makes expiry consistent for everyone. Calling TIME
before a write is safe because scripts replicate their effects, not the script (the default since
Redis 5, the only mode since 7; `redis.replicate_commands()` covers 3.2-4).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adaspec.loadstore.base import LoadStore, LoadStoreUnavailable, ReplicaLoad, check_duration

__all__ = ["RedisLoadStore"]

T = TypeVar("T")

_NOW_MS = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Keep a sorted set's own key alive exactly as long as its latest-expiring member, so keys of
# replicas that vanished without `remove` clean themselves up.
_EXPIRE_WITH_LAST = """
local last = redis.call('ZRANGE', KEYS[{k}], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIRE', KEYS[{k}], math.max(1, tonumber(last[2]) - now)) end
"""

# KEYS: replica hash, index.  ARGV: ttl_ms, replica_id, field1, value1, ...
# DEL first so the hash is replaced, not merged: a field a replica stops sending must not linger.
_PUBLISH = _NOW_MS + """
local ttl = tonumber(ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
""" + _EXPIRE_WITH_LAST.format(k=2) + "return 1\n"

# KEYS: leases zset.  ARGV: lease_id, limit, lease_ms.  Returns 1 if the lease is held afterwards.
# Drop expired leases, then admit if the lease is already held (idempotent; renews it) or a slot is free.
_RESERVE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
""" + _EXPIRE_WITH_LAST.format(k=1) + "return 1\n"

# KEYS: leases zset.  Live leases are those expiring strictly after now (same rule as the prune above).
_COUNT = _NOW_MS + """
return redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now), '+inf')
"""


def redact(url: str) -> str:
    """The URL without its password, so error messages and logs never leak credentials."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLoadStore(LoadStore):
    """`LoadStore` over redis.asyncio; the client connects lazily on the first call.

    Create it inside the event loop that uses it (redis.asyncio connections belong to one loop).
    Retries are few and short: a heartbeat or routing decision is better failed fast and retried by
    its caller than stalled for seconds; every command here is idempotent, so a retry is safe.
    """

    def __init__(self, url: str, prefix: str = "adaspec", *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        self._publish = self._client.register_script(_PUBLISH)
        self._reserve = self._client.register_script(_RESERVE)
        self._count = self._client.register_script(_COUNT)

    def _replica_key(self, replica_id: str) -> str:
        return f"{self.prefix}:replica:{replica_id}"

    def _lease_key(self, replica_id: str) -> str:
        return f"{self.prefix}:leases:{replica_id}"

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}:replicas"

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await a redis call, turning transport failures into `LoadStoreUnavailable`."""
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise LoadStoreUnavailable(redact(self.url), f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def publish(self, load: ReplicaLoad, ttl_s: float) -> None:
        ttl_ms = check_duration("ttl_s", ttl_s)
        if not load.updated_at:
            load = dataclasses.replace(load, updated_at=time.time())
        flat: list[Any] = [x for kv in load.to_dict().items() for x in kv]
        keys = [self._replica_key(load.replica_id), self._index_key]
        await self._call(self._publish(keys=keys, args=[ttl_ms, load.replica_id, *flat]))

    async def replicas(self, kind: str | None = None) -> list[ReplicaLoad]:
        ids: list[str] = await self._call(self._client.zrange(self._index_key, 0, -1))
        if not ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for replica_id in ids:
                pipe.hgetall(self._replica_key(replica_id))
            hashes: list[dict[str, str]] = await self._call(pipe.execute())
        # An expired hash reads as empty even before Redis reaps it, so expiry is exact here.
        loads = [ReplicaLoad.from_dict(h) for h in hashes if h]
        return sorted((r for r in loads if kind is None or r.kind == kind), key=lambda r: r.replica_id)

    async def remove(self, replica_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._replica_key(replica_id), self._lease_key(replica_id))
            pipe.zrem(self._index_key, replica_id)
            await self._call(pipe.execute())

    async def reserve(self, replica_id: str, lease_id: str, limit: int, lease_s: float) -> bool:
        lease_ms = check_duration("lease_s", lease_s)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        held = await self._call(self._reserve(keys=[self._lease_key(replica_id)],
                                              args=[lease_id, int(limit), lease_ms]))
        return bool(int(held))

    async def release(self, replica_id: str, lease_id: str) -> None:
        await self._call(self._client.zrem(self._lease_key(replica_id), lease_id))

    async def reservations(self, replica_id: str) -> int:
        return int(await self._call(self._count(keys=[self._lease_key(replica_id)])))

    async def close(self) -> None:
        # `aclose` is redis-py >= 5.0.1; plain `close` before that.
        closer = getattr(self._client, "aclose", None) or self._client.close
        await closer()
