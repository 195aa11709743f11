"""`adaspec healthcheck` against a real gRPC health server."""

from __future__ import annotations

import asyncio

from adaspec import cli
from adaspec.serving.server import ServiceHost
from adaspec.v1 import verify_pb2

VERIFY = verify_pb2.DESCRIPTOR.services_by_name["Verify"].full_name


def run_healthcheck(*argv: str) -> int:
    return cli.main(["healthcheck", *argv, "--timeout", "2"])


def test_healthcheck_exits_0_only_while_the_service_is_serving():
    async def scenario():
        host = ServiceHost("test", [VERIFY], port=0)
        await host.start()
        try:
            codes = [await asyncio.to_thread(run_healthcheck, host.address),
                     await asyncio.to_thread(run_healthcheck, host.address, "--service", VERIFY),
                     await asyncio.to_thread(run_healthcheck, host.address, "--service", "adaspec.v1.Nothing")]
            await host.health.enter_graceful_shutdown()  # what SIGTERM does first
            codes.append(await asyncio.to_thread(run_healthcheck, host.address))
        finally:
            await host.stop()
        codes.append(await asyncio.to_thread(run_healthcheck, host.address))  # nothing listens any more
        return codes

    assert asyncio.run(scenario()) == [0, 0, 1, 1, 1]
