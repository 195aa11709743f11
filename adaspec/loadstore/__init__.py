"""Load store: replica heartbeats and capacity leases shared by services and coordinators.

`open_load_store(None)` gives the in-process store (single-node default); a redis URL gives the shared
Redis store. No torch here: the coordinator and the CLI import this without loading a model.
"""

from __future__ import annotations

from adaspec.loadstore.base import LoadStore, LoadStoreUnavailable, ReplicaLoad
from adaspec.loadstore.memory import InProcessLoadStore
from adaspec.loadstore.redis_server import RedisServer, RedisServerError
from adaspec.loadstore.redis_store import RedisLoadStore, redact

__all__ = [
    "InProcessLoadStore",
    "LoadStore",
    "LoadStoreUnavailable",
    "RedisLoadStore",
    "RedisServer",
    "RedisServerError",
    "ReplicaLoad",
    "open_load_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_load_store(url: str | None, prefix: str = "adaspec") -> LoadStore:
    """The store a `--redis`/`--load-store` setting names.

    None or "memory" -> `InProcessLoadStore`; redis://, rediss:// or unix:// -> `RedisLoadStore` (which
    connects lazily, so call `await store.ping()` to fail fast). Anything else is a configuration
    error, reported with the URL rather than guessed at. Call it inside the event loop that will use it.
    """
    if url is None or url.strip().lower() == "memory":
        return InProcessLoadStore()
    if url.lower().startswith(_REDIS_SCHEMES):
        return RedisLoadStore(url, prefix=prefix)
    raise ValueError(f"unsupported load store URL {redact(url)!r}: expected 'memory', redis://, rediss:// or unix://")
