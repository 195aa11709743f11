"""The coordinator's end of a link: session streams to one replica multiplexed on one gRPC stream.

`Links.open(address, method, ...)` returns a `LinkStream`: the part of a grpc.aio stream-stream call a
coordinator uses (`write`, `read`, `done_writing`, `cancel`), with the same errors (`AioRpcError` with the
session's own status and rich details). Messages written by many sessions in one turn of the event loop
leave as one `LinkFrames` message (see `adaspec.service_runtime.link_server` for why). A link that fails ends
each of its sessions with UNAVAILABLE, and the next `open` to that address starts a new link.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from adaspec.service_runtime.link_server import FRAME_OVERHEAD_BYTES, MAX_LINK_MESSAGE_BYTES, link_messages
from adaspec.v1 import common_pb2

log = logging.getLogger(__name__)


def rpc_error(code: grpc.StatusCode, details: str, status: bytes = b"") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((rpc_status.GRPC_DETAILS_METADATA_KEY, status)) if status else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def error_from_status(status: bytes) -> grpc.aio.AioRpcError:
    parsed = rpc_status.to_status(status_pb2.Status.FromString(status))
    return rpc_error(parsed.code, parsed.details, status)


class LinkStream:
    """One session on a link. `timeout` (seconds) bounds the whole session, as a call's would."""

    def __init__(self, link: Link, session: int, serialize: Callable, parse: Callable, timeout: float | None):
        self.link, self.session, self.serialize, self.parse = link, session, serialize, parse
        loop = asyncio.get_running_loop()
        self.deadline = None if timeout is None else loop.time() + timeout
        self.incoming: asyncio.Queue = asyncio.Queue()  # message bytes, then EOF or the session's error
        self.ended = False  # the session ended (its last item is queued) or this end cancelled it
        self.writing, self.first = True, True

    async def write(self, message) -> None:
        if not self.writing:
            raise grpc.aio.UsageError("write after done_writing or cancel")
        data = self.serialize(message)
        if len(data) + FRAME_OVERHEAD_BYTES > self.link.max_message_bytes:  # alone: fail this session, not the link
            self.cancel()
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"a message of {len(data)} bytes is over the link's limit of {self.link.max_message_bytes}")
        frame = common_pb2.LinkFrame(session=self.session, message=data)
        if self.deadline is not None and self.first:  # the replica keeps the deadline too, as a call's server would
            frame.timeout_s = max(1e-3, self.deadline - asyncio.get_running_loop().time())
        self.first = False
        self.link.send(frame)

    async def read(self):
        """The next message, or grpc.aio.EOF when the session ended OK; raises AioRpcError when it failed."""
        if self.deadline is None:
            item = await self.incoming.get()
        else:
            try:
                async with asyncio.timeout_at(self.deadline):
                    item = await self.incoming.get()
            except TimeoutError:
                self.cancel()
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if isinstance(item, bytes):
            return self.parse(item)
        self.incoming.put_nowait(item)  # EOF or the error again on a later read
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    async def done_writing(self) -> None:
        if self.writing and not self.ended:
            self.link.send(common_pb2.LinkFrame(session=self.session, end=True))
        self.writing = False

    def cancel(self) -> None:
        self.writing = False
        if not self.ended:
            self.end(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled"))
            self.link.send(common_pb2.LinkFrame(session=self.session, cancel=True))

    def end(self, last) -> None:
        self.ended = True
        self.link.streams.pop(self.session, None)
        self.incoming.put_nowait(last)

    def receive(self, frame: common_pb2.LinkFrame) -> None:
        if frame.message:
            self.incoming.put_nowait(frame.message)
        if frame.end:
            self.end(error_from_status(frame.status) if frame.status else grpc.aio.EOF)


class Link:
    """One `Link` call to one replica's service, and its sessions."""

    def __init__(self, channel: grpc.aio.Channel, method: str, address: str, max_message_bytes: int):
        self.address, self.max_message_bytes = address, max_message_bytes
        self.call = channel.stream_stream(method, request_serializer=common_pb2.LinkFrames.SerializeToString,
                                          response_deserializer=common_pb2.LinkFrames.FromString)()
        self.streams: dict[int, LinkStream] = {}
        self.last_session = 0
        self.outbox: list[common_pb2.LinkFrame] = []
        self.ready = asyncio.Event()
        self.failed = False
        self.tasks = [asyncio.create_task(self._write(), name=f"link-write {address}"),
                      asyncio.create_task(self._read(), name=f"link-read {address}")]

    def open(self, serialize: Callable, parse: Callable, timeout: float | None) -> LinkStream:
        self.last_session += 1
        stream = LinkStream(self, self.last_session, serialize, parse, timeout)
        self.streams[stream.session] = stream
        return stream

    def send(self, frame: common_pb2.LinkFrame) -> None:
        if not self.failed:
            self.outbox.append(frame)
            self.ready.set()

    async def _write(self) -> None:
        try:
            while True:
                await self.ready.wait()
                self.ready.clear()
                frames, self.outbox = self.outbox, []
                for message in link_messages(frames, self.max_message_bytes):
                    await self.call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the call ended: `_read` reports it

    async def _read(self) -> None:
        reason = "the replica ended the link"
        try:
            async for batch in self.call:
                for frame in batch.frames:
                    stream = self.streams.get(frame.session)
                    if stream is not None:
                        stream.receive(frame)
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
        finally:
            self.fail(reason)

    def fail(self, reason: str) -> None:
        """End the link and every session still on it (UNAVAILABLE: the replica, not the session, failed)."""
        if self.failed:
            return
        self.failed = True
        if self.streams:
            log.warning("link lost", extra={"address": self.address, "sessions": len(self.streams), "reason": reason})
        for stream in list(self.streams.values()):
            stream.end(rpc_error(grpc.StatusCode.UNAVAILABLE, f"link to {self.address} lost: {reason}"))
        self.call.cancel()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class Links:
    """One link per (replica address, service), opened on first use and replaced when it fails."""

    def __init__(self, channel_for: Callable[[str], grpc.aio.Channel], max_message_bytes: int = MAX_LINK_MESSAGE_BYTES):
        self.channel_for, self.max_message_bytes = channel_for, max_message_bytes
        self._links: dict[tuple[str, str], Link] = {}

    def open(self, address: str, method: str, serialize: Callable, parse: Callable,
             timeout: float | None = None) -> LinkStream:
        """A new session on the link to `method` (e.g. "/adaspec.v1.Verify/Link") at `address`."""
        link = self._links.get((address, method))
        if link is None or link.failed:
            link = self._links[address, method] = Link(self.channel_for(address), method, address,
                                                       self.max_message_bytes)
        return link.open(serialize, parse, timeout)

    def close(self) -> None:
        for link in self._links.values():
            link.fail("the coordinator is stopping")
        self._links.clear()
