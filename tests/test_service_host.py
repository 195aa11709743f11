"""`ServiceHost.stop`: the grace period bounds the whole shutdown, and the server stops whatever the drain does."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adaspec.serving.server import ServiceHost


async def health_code(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


def test_a_drain_that_never_ends_is_cut_at_the_grace_period():
    async def scenario():
        host = ServiceHost("test", [], grace_s=0.5)
        await host.start()
        assert await health_code(host.address) is grpc.StatusCode.OK
        start = time.monotonic()
        await host.stop(lambda: asyncio.sleep(60))
        return time.monotonic() - start, await health_code(host.address)

    elapsed, code = asyncio.run(scenario())
    assert elapsed < 2.0 and code is grpc.StatusCode.UNAVAILABLE


def test_a_failing_drain_still_stops_the_server():
    async def failing_drain():
        raise RuntimeError("drain failed")

    async def scenario():
        host = ServiceHost("test", [], grace_s=5.0)
        await host.start()
        with pytest.raises(RuntimeError, match="drain failed"):
            await host.stop(failing_drain)
        return await health_code(host.address)

    assert asyncio.run(scenario()) is grpc.StatusCode.UNAVAILABLE
