"""A coordinator's capacity leases: never leaked by a cancel, short and renewed, counted locally while Redis is
down and put back when it returns (a real redis-server)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from adaspec.services.coordinator.leases import Leases

from adaspec.loadstore import InProcessLoadStore, RedisLoadStore, RedisServer
from tests.conftest import SentOverANetwork


class AnswersLate(InProcessLoadStore):
    """A store whose reserve takes the lease at once and answers 50 ms later, as a network round trip does."""

    async def reserve(self, replica_id, lease_id, limit, lease_s):
        taken = await super().reserve(replica_id, lease_id, limit, lease_s)
        await asyncio.sleep(0.05)
        return taken


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def test_a_take_cancelled_while_the_store_answers_gives_the_lease_back():
    """A request cancelled (or past its deadline) during the store's round trip: the store took the lease, nobody
    will release it; with hour-long leases that capacity was gone for an hour."""

    async def scenario():
        store = AnswersLate()
        leases = Leases(store)
        taking = asyncio.create_task(leases.take("verify-0", "lease-1", 4))
        await asyncio.sleep(0.01)  # the store has the lease; its answer is on its way
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taking
        await asyncio.sleep(0.1)
        return await store.reservations("verify-0"), leases.held

    assert asyncio.run(scenario()) == (0, {})


def test_a_lease_released_while_the_renewal_runs_is_not_put_back():
    """The renewal goes through the held leases one round trip at a time: one released meanwhile, before its turn or
    while its renewal is on the way, must not come back to hold a slot (for lease_s: 30 s by default)."""

    async def scenario():
        store = SentOverANetwork(delay_s=0.05)
        leases = Leases(store, lease_s=1.0, renew_s=0.2)
        assert await leases.take("verify-0", "a", 4) and await leases.take("verify-0", "b", 4)
        leases.start()
        await asyncio.sleep(0.22)  # the renewal of "a" is on its way; "b" waits its turn
        await asyncio.gather(leases.release("verify-0", "a"), leases.release("verify-0", "b"))
        await asyncio.sleep(0.25)  # the renewal is done, the next not begun
        counts = await store.reservations("verify-0"), await leases.local.reservations("verify-0")
        await leases.stop()
        return counts, leases.held

    assert asyncio.run(scenario()) == ((0, 0), {})


def test_leases_are_renewed_while_held_and_a_dead_coordinators_expire(redis_server):
    async def scenario():
        store = RedisLoadStore(redis_server.url, prefix="renew")
        leases = Leases(store, lease_s=0.4, renew_s=0.1)
        leases.start()
        assert await leases.take("verify-0", "held", 4)
        await asyncio.sleep(1.0)  # well past lease_s: still there, renewed
        held = await store.reservations("verify-0")
        await leases.release("verify-0", "held")
        released = await store.reservations("verify-0")
        assert await leases.take("verify-0", "orphan", 4)
        await leases.stop()  # the coordinator dies holding it
        await asyncio.sleep(0.6)
        expired = await store.reservations("verify-0")
        await store.close()
        return held, released, expired

    assert asyncio.run(scenario()) == (1, 0, 0)


def test_while_redis_is_down_leases_are_counted_here_and_put_back_when_it_returns(redis_server):
    """Redis stops answering (SIGSTOP): the first call times out, then no request waits for it; this coordinator's
    own leases count against capacity; a release is left to expire. Back: the held leases are renewed there."""
    pid = redis_server.pid

    async def scenario():
        store = RedisLoadStore(redis_server.url, prefix="outage", timeout_s=0.3)
        leases = Leases(store, lease_s=30.0, renew_s=0.2)
        leases.start()
        assert await leases.take("verify-0", "before", 2)
        os.kill(pid, signal.SIGSTOP)
        try:
            assert await leases.take("verify-0", "during", 2)  # times out once, then counted here
            assert not leases.available
            assert not await leases.take("verify-0", "over", 2)  # two held: the replica is full
            loop = asyncio.get_running_loop()
            start = loop.time()
            await leases.release("verify-0", "before")  # no wait: the store is not asked while it is down
            assert loop.time() - start < 0.1 and await leases.count("verify-0") == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        for _ in range(40):
            await asyncio.sleep(0.1)
            if leases.available:
                break
        counted = await store.reservations("verify-0")
        await leases.stop()
        await store.close()
        return leases.available, counted

    assert asyncio.run(scenario()) == (True, 2)  # "during", put back; "before", still there until it expires
