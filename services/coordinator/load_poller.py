"""Single-node mode: the coordinator pulls each configured replica's load into its in-process store.

With Redis, replicas publish their own heartbeats. With the in-process store (the embedded default)
they cannot reach it, so the coordinator asks each replica it was given (`GetLoad`) on the same
interval and publishes the answer with the same TTL. A replica that stops answering expires exactly
as it would in Redis; the routing code above the store does not know the difference.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from adaspec.loadstore import LoadStore, ReplicaLoad
from adaspec.v1 import common_pb2, draft_pb2_grpc, verify_pb2_grpc

log = logging.getLogger(__name__)


class LoadPoller:
    def __init__(self, store: LoadStore, channels, verify: list[str], draft: list[str], interval_s: float = 0.5,
                 ttl_s: float = 3.0):
        self.store, self.channels = store, channels
        self.targets = [(a, verify_pb2_grpc.VerifyStub) for a in verify]
        self.targets += [(a, draft_pb2_grpc.DraftStub) for a in draft]
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="load-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(address, stub) for address, stub in self.targets))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll_once()

    async def _poll(self, address: str, stub_class) -> None:
        try:
            reply = await stub_class(self.channels.get(address)).GetLoad(common_pb2.GetLoadRequest(),
                                                                          timeout=self.interval_s * 2)
        except grpc.aio.AioRpcError as error:
            log.debug("replica not answering", extra={"address": address, "code": error.code().name})
            return
        load = ReplicaLoad.from_proto(reply)
        load.address = address  # the address we reach it by, whatever it calls itself
        await self.store.publish(load, self.ttl_s)
