"""This coordinator's capacity leases on replicas: taken atomically in the load store, renewed, never leaked.

A session holds one lease on its replica for as long as it runs (the load store's `reserve`: atomic across
coordinators, bounded by the replica's `max_sessions`). Leases are short (`lease_s`) and renewed every
`renew_s` while held, so the capacity of a coordinator that dies comes back within `lease_s`, not an hour.

- A lease whose taking is cancelled (the request's deadline or cancel landing during the store's round trip)
  is released as soon as the store answers: the store may have taken it. Likewise a lease released while its
  renewal is on its way is released again once the renewal is answered.
- Once the store fails to answer, leases are counted here instead (this coordinator's own sessions against
  each replica's `max_sessions`; the replica still refuses what it cannot hold) and the store is not asked
  again until the renewal finds it back (no request waits for its time-outs meanwhile); a release that cannot
  reach it is left to expire; the renewal then puts every held lease back in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from adaspec.loadstore import InProcessLoadStore, LoadStore, LoadStoreUnavailable

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, store: LoadStore, lease_s: float = 30.0, renew_s: float = 10.0):
        assert lease_s > renew_s > 0
        self.store, self.lease_s, self.renew_s = store, lease_s, renew_s
        self.held: dict[str, tuple[str, int]] = {}  # lease id -> (replica id, its limit)
        self.taking: Counter[str] = Counter()  # replica id -> leases being taken there now
        self.local = InProcessLoadStore()  # the count while the store is unavailable
        self.unavailable_since: float | None = None  # time.monotonic()
        self._task: asyncio.Task | None = None
        self._releases: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew(), name="lease-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._releases, return_exceptions=True)

    @property
    def available(self) -> bool:
        return self.unavailable_since is None

    async def count(self, replica_id: str) -> int:
        """Live leases on the replica, from the store (or this coordinator's own while it is unavailable)."""
        if self.available:
            try:
                return await self.store.reservations(replica_id)
            except LoadStoreUnavailable as error:
                self._unavailable(error)
        return await self.local.reservations(replica_id)

    def own(self) -> Counter[str]:
        """This coordinator's leases per replica, held or being taken: known at once, where the store's count is a
        round trip old (a burst of requests all read it before any of them takes a lease)."""
        return self.taking + Counter(replica_id for replica_id, _ in self.held.values())

    async def take(self, replica_id: str, lease_id: str, limit: int) -> bool:
        """Take one of `limit` slots on the replica; False when they are all taken."""
        taking = asyncio.ensure_future(self._reserve(replica_id, lease_id, limit))
        self.taking[replica_id] += 1
        try:
            taken = await asyncio.shield(taking)
        except asyncio.CancelledError:  # the store may still take it: give it back as soon as it answers
            taking.add_done_callback(lambda done: self._release_later(done, replica_id, lease_id))
            raise
        finally:
            self.taking[replica_id] -= 1
        if taken:
            self.held[lease_id] = (replica_id, limit)
        return taken

    async def release(self, replica_id: str, lease_id: str) -> None:
        self.held.pop(lease_id, None)
        await self.local.release(replica_id, lease_id)
        if self.available:
            try:
                await self.store.release(replica_id, lease_id)
            except LoadStoreUnavailable as error:  # it expires by itself within lease_s
                self._unavailable(error)

    async def _reserve(self, replica_id: str, lease_id: str, limit: int) -> bool:
        if self.available:
            try:
                taken = await self.store.reserve(replica_id, lease_id, limit, self.lease_s)
            except LoadStoreUnavailable as error:
                self._unavailable(error)
            else:
                if taken:  # counted here too, for the moment the store becomes unavailable
                    await self.local.reserve(replica_id, lease_id, limit, self.lease_s)
                return taken
        return await self.local.reserve(replica_id, lease_id, limit, self.lease_s)

    def _release_later(self, taking: asyncio.Future, replica_id: str, lease_id: str) -> None:
        if taking.cancelled() or taking.exception() is not None or not taking.result():
            return
        release = asyncio.ensure_future(self.release(replica_id, lease_id))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    def _unavailable(self, error: LoadStoreUnavailable) -> None:
        if self.unavailable_since is None:
            self.unavailable_since = time.monotonic()
            log.warning("load store unavailable: leases counted by this coordinator until it is back",
                        extra={"error": error.reason, "held": len(self.held)})

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                await self.store.ping()
                for lease_id, (replica_id, limit) in list(self.held.items()):
                    if lease_id not in self.held:  # released since: renewing it would hold a slot for lease_s
                        continue
                    await self.local.reserve(replica_id, lease_id, limit, self.lease_s)  # the count for an outage
                    # renews a lease the store holds; puts back one it lost while it was down
                    await self.store.reserve(replica_id, lease_id, limit, self.lease_s)
                    if lease_id not in self.held:  # released during the round trip: the renewal may have landed last
                        await self.local.release(replica_id, lease_id)
                        await self.store.release(replica_id, lease_id)
            except LoadStoreUnavailable as error:
                self._unavailable(error)
                continue
            if self.unavailable_since is not None:
                log.info("load store back: leases renewed there",
                         extra={"held": len(self.held),
                                "unavailable_s": round(time.monotonic() - self.unavailable_since, 1)})
                self.unavailable_since = None
