"""Links over real gRPC: many session streams on one call, each ending on its own, as a call of its own would."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from adaspec.errors import abort, from_rpc_error
from adaspec.service_runtime.link_client import Links
from adaspec.service_runtime.link_server import MAX_LINK_MESSAGE_BYTES, MAX_UNREAD, LinkServer
from adaspec.v1 import common_pb2

METHOD = "/test.Echo/Link"


class EchoService:
    """Each session echoes its messages upper-cased; "bad" aborts it, "hang" waits until it is cancelled,
    "end" ends it OK."""

    def __init__(self, max_message_bytes: int = MAX_LINK_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self.received: list[int] = []  # frames per link message received
        self.started: list[str] = []  # the first message of every session, as its handler reads it
        self.closed: list[str] = []  # the same, as its handler ends
        self.batches: list[int] = []  # frames per link message sent

    async def session(self, requests, context):
        first = None
        try:
            async for request in requests:
                if first is None:
                    first = request.value
                    self.started.append(first)
                if request.value == "bad":
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad value", field="value")
                if request.value == "hang":
                    await asyncio.Event().wait()
                if request.value == "end":
                    return
                yield StringValue(value=request.value.upper())
        finally:
            self.closed.append(first)

    async def link(self, frames, context):
        async def counted():
            async for batch in frames:
                self.received.append(len(batch.frames))
                yield batch

        self.server = LinkServer(self.session, StringValue, "echo", self.max_message_bytes)
        async for batch in self.server.serve(counted()):
            self.batches.append(len(batch.frames))
            yield batch


async def start_server(service: EchoService, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(service.link, request_deserializer=common_pb2.LinkFrames.FromString,
                                                    response_serializer=common_pb2.LinkFrames.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Link": handler}),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


class Client:
    def __init__(self, port: int, max_message_bytes: int = MAX_LINK_MESSAGE_BYTES):
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.links = Links(lambda address: self.channel, max_message_bytes)
        self.address = f"127.0.0.1:{port}"

    def open(self, timeout: float | None = None):
        return self.links.open(self.address, METHOD, StringValue.SerializeToString, StringValue.FromString,
                               timeout=timeout)

    async def close(self) -> None:
        self.links.close()
        await self.channel.close()


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def run(scenario, max_message_bytes: int = MAX_LINK_MESSAGE_BYTES) -> None:
    async def main():
        service = EchoService(max_message_bytes)
        server, port = await start_server(service)
        client = Client(port, max_message_bytes)
        try:
            await scenario(service, server, client)
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(main())


def test_sessions_share_one_call_and_each_gets_its_own_replies_in_order():
    async def scenario(service, server, client):
        async def session(i: int) -> list[str]:
            stream = client.open()
            replies = []
            for step in range(3):
                await stream.write(StringValue(value=f"s{i}-{step}"))
                replies.append((await stream.read()).value)
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF
            return replies

        results = await asyncio.gather(*(session(i) for i in range(8)))
        assert results == [[f"S{i}-{step}" for step in range(3)] for i in range(8)]
        assert len(client.links._links) == 1
        # 8 sessions x (3 replies + the end) = 32 frames, in far fewer messages: a step's replies leave together
        assert sum(service.batches) == 32
        assert len(service.batches) <= 8, service.batches
        await wait_until(lambda: len(service.closed) == 8)
        assert not service.server.sessions and not client.links._links[client.address, METHOD].streams

    run(scenario)


def test_an_aborted_session_gets_its_status_and_details_and_the_others_go_on():
    async def scenario(service, server, client):
        good, bad = client.open(), client.open()
        await good.write(StringValue(value="a"))
        await bad.write(StringValue(value="bad"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await bad.read()
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == "bad value"
        assert from_rpc_error(raised.value).field_violations == [("value", "bad value")]
        with pytest.raises(grpc.aio.AioRpcError):  # and again on a later read, as a call's error would
            await bad.read()
        assert (await good.read()).value == "A"
        await good.write(StringValue(value="b"))
        assert (await good.read()).value == "B"

    run(scenario)


def test_a_cancelled_session_is_closed_on_the_server_and_leaves_the_link():
    async def scenario(service, server, client):
        hanging, other = client.open(), client.open()
        await hanging.write(StringValue(value="hang"))
        await other.write(StringValue(value="x"))
        assert (await other.read()).value == "X"
        hanging.cancel()
        await wait_until(lambda: service.closed == ["hang"])
        assert list(service.server.sessions) == [other.session]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await hanging.read()
        assert raised.value.code() is grpc.StatusCode.CANCELLED
        await other.done_writing()
        assert await other.read() is grpc.aio.EOF
        await wait_until(lambda: service.closed == ["hang", "x"])
        assert not service.server.sessions

    run(scenario)


def test_messages_after_a_session_ended_are_ignored_and_open_nothing():
    async def scenario(service, server, client):
        stream = client.open()
        await stream.write(StringValue(value="end"))
        assert await stream.read() is grpc.aio.EOF
        await stream.write(StringValue(value="late"))  # e.g. a step sent ahead of a final reply
        other = client.open()
        await other.write(StringValue(value="z"))
        assert (await other.read()).value == "Z"
        assert service.started == ["end", "z"]
        assert list(service.server.sessions) == [other.session]

    run(scenario)


def test_link_messages_stay_under_the_size_limit_and_an_oversized_message_fails_its_session_alone():
    async def scenario(service, server, client):
        streams = [client.open() for _ in range(4)]
        for i, stream in enumerate(streams):  # in one turn: joined, then split to stay under 1000 bytes
            await stream.write(StringValue(value=f"{i}" * 600))
        assert [(await stream.read()).value for stream in streams] == [f"{i}" * 600 for i in range(4)]
        assert len(service.received) >= 4 and max(service.received) <= 2  # a 600-byte message alone, or with an end
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await streams[0].write(StringValue(value="x" * 2000))
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await streams[1].write(StringValue(value="y"))
        assert (await streams[1].read()).value == "Y"
        await wait_until(lambda: service.closed == ["0" * 600])  # the failed session is cancelled on the server

    run(scenario, max_message_bytes=1000)


def test_a_session_deadline_ends_it_with_deadline_exceeded_and_closes_it_on_the_server():
    async def scenario(service, server, client):
        stream = client.open(timeout=0.3)
        await stream.write(StringValue(value="hang"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: service.closed == ["hang"])

    run(scenario)


def test_the_replica_ends_a_session_at_its_deadline_on_its_own():
    async def scenario(service, server, client):
        stream = client.open(timeout=0.3)
        await stream.write(StringValue(value="hang"))
        await wait_until(lambda: stream.ended)  # no read here: no cancel from this end
        assert service.closed == ["hang"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline of 0.3 s exceeded" in raised.value.details()

    run(scenario)


def test_a_session_flooding_the_link_is_ended_and_the_link_goes_on():
    async def scenario(service, server, client):
        flood, other = client.open(), client.open()
        await flood.write(StringValue(value="hang"))
        await wait_until(lambda: service.started == ["hang"])
        for _ in range(MAX_UNREAD + 1):
            await flood.write(StringValue(value="more"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await flood.read()
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await other.write(StringValue(value="y"))
        assert (await other.read()).value == "Y"
        await wait_until(lambda: service.closed == ["hang"])

    run(scenario)


def test_a_lost_replica_ends_every_session_unavailable_and_the_next_open_starts_a_new_link():
    async def scenario(service, server, client):
        streams = [client.open() for _ in range(3)]
        for stream in streams:
            await stream.write(StringValue(value="hang"))
        await wait_until(lambda: len(service.started) == 3)
        await server.stop(0)
        await wait_until(lambda: service.closed == ["hang"] * 3)  # the server closed its sessions too
        for stream in streams:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream.read()
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "link to 127.0.0.1" in raised.value.details()
        restarted, _ = await start_server(service, int(client.address.rsplit(":", 1)[1]))
        try:
            stream = client.open()
            await stream.write(StringValue(value="again"))
            assert (await stream.read()).value == "AGAIN"
        finally:
            await restarted.stop(0)

    run(scenario)


def test_a_coordinator_that_goes_away_has_every_session_closed_on_the_server():
    async def scenario(service, server, client):
        for _ in range(3):
            await client.open().write(StringValue(value="hang"))
        await wait_until(lambda: len(service.started) == 3)
        client.links.close()
        await wait_until(lambda: service.closed == ["hang"] * 3)

    run(scenario)
