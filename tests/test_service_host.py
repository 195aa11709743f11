"""`ServiceHost.stop`: the grace period bounds the whole shutdown, and the server stops whatever the drain does."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from adaspec.service_runtime.server import ServiceHost


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


def test_requests_that_do_not_decode_get_invalid_argument_and_the_rest_are_served():
    """Every method of a hosted service (here health: unary, and a stream written with `context.write`; and
    reflection: a request stream) refuses a message that does not decode with INVALID_ARGUMENT naming what is
    wrong; good requests on the same server are answered."""
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) holding invalid UTF-8
    corrupt = b"\x0a\xff"  # a length that runs past the end

    async def scenario():
        host = ServiceHost("test", [], grace_s=0.5)
        await host.start()
        codes = []
        async with grpc.aio.insecure_channel(host.address) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                                        response_deserializer=health_pb2.HealthCheckResponse.FromString)
            watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None,
                                         response_deserializer=health_pb2.HealthCheckResponse.FromString)
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                            request_serializer=None, response_deserializer=None)
            for call in (lambda raw: check(raw, timeout=2), lambda raw: watch(raw, timeout=2).read(),
                         lambda raw: reflect(iter([raw]), timeout=2).read()):
                for raw in (bad_utf8, corrupt):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call(raw)
                    codes.append((refused.value.code(), refused.value.details()))
            good = health_pb2.HealthCheckRequest().SerializeToString()
            served = (await check(good, timeout=2)).status, (await watch(good, timeout=2).read()).status
        await host.stop()
        return codes, served

    codes, served = asyncio.run(scenario())
    assert [code for code, _ in codes] == [grpc.StatusCode.INVALID_ARGUMENT] * 6
    assert "bad UTF-8" in codes[0][1] and "/grpc.health.v1.Health/Check" in codes[0][1]
    assert "corrupt" in codes[1][1].lower()
    assert served == (health_pb2.HealthCheckResponse.SERVING,) * 2


def test_reflection_can_be_turned_off():
    async def reflection_code(reflection_on: bool) -> grpc.StatusCode:
        host = ServiceHost("test", [], grace_s=0.5, reflection_on=reflection_on)
        await host.start()
        try:
            async with grpc.aio.insecure_channel(host.address) as channel:
                reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                                request_serializer=None, response_deserializer=None)
                request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
                try:
                    await reflect(iter([request]), timeout=2).read()
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK
        finally:
            await host.stop()

    assert asyncio.run(reflection_code(True)) is grpc.StatusCode.OK
    assert asyncio.run(reflection_code(False)) is grpc.StatusCode.UNIMPLEMENTED
