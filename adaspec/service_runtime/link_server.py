"""The replica's end of a link: many session streams on one gRPC stream (`LinkFrame` in common.proto).

gRPC aio spends about 0.1 ms of Python per message at each end; with one stream per session, a step of N
sessions costs N messages each way at the replica and as many at the coordinator, which on a busy machine
is time taken from the engine. On a link the step's replies leave together: each session's handler yields
into a shared outbox, and the link writes whatever is there as one `LinkFrames` message.

Each session runs the service's own `Session` handler, unchanged: it reads its messages from an inbox and
ends the way a call would (the final reply, or `abort_with_status`), which becomes a frame with `end` and
the status. A session the coordinator cancels, and every session when the link ends, is cancelled like a
call: its handler's cleanup closes it in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from adaspec.errors import rich_status
from adaspec.service_runtime.server import MAX_MESSAGE_BYTES
from adaspec.v1 import common_pb2

log = logging.getLogger(__name__)
MAX_UNREAD = 8  # messages a session may have waiting for its handler; a session flooding the link ends
# A link message joins the frames of many sessions: it is split to stay this far below gRPC's message limit
# (large prompts of several sessions must not fail the link), and one frame over it fails its session alone.
MAX_LINK_MESSAGE_BYTES = MAX_MESSAGE_BYTES // 2
FRAME_OVERHEAD_BYTES = 32


def link_messages(frames: list[common_pb2.LinkFrame], limit: int) -> list[common_pb2.LinkFrames]:
    """`frames`, in order, as link messages of at most `limit` bytes of session messages each."""
    messages, batch, size = [], [], 0
    for frame in frames:
        frame_bytes = len(frame.message) + FRAME_OVERHEAD_BYTES
        if batch and size + frame_bytes > limit:
            messages.append(common_pb2.LinkFrames(frames=batch))
            batch, size = [], 0
        batch.append(frame)
        size += frame_bytes
    if batch:
        messages.append(common_pb2.LinkFrames(frames=batch))
    return messages


class SessionAborted(Exception):
    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


class SessionContext:
    """What a `Session` handler uses of its `ServicerContext`: aborting ends this session only."""

    async def abort_with_status(self, status: grpc.Status):
        raise SessionAborted(status)


class Inbox:
    """A session's incoming messages, as the async iterator a handler reads its requests from."""

    _END = object()

    def __init__(self):
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, message) -> None:
        self._queue.put_nowait(message)

    def end(self) -> None:
        self._queue.put_nowait(self._END)

    @property
    def unread(self) -> int:
        return self._queue.qsize()

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._queue.get()
        if message is self._END:
            self._queue.put_nowait(self._END)  # a later read ends too
            raise StopAsyncIteration
        return message


def status_bytes(status: grpc.Status) -> bytes:
    """The serialized google.rpc.Status of `status` (its rich details as sent in the trailer)."""
    for key, value in status.trailing_metadata or ():
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY:
            return value
    return rich_status(status.code, status.details).trailing_metadata[0][1]


class LinkServer:
    def __init__(self, handler: Callable, request_type, name: str, max_message_bytes: int = MAX_LINK_MESSAGE_BYTES):
        self.handler, self.request_type, self.name = handler, request_type, name
        self.max_message_bytes = max_message_bytes
        self.sessions: dict[int, tuple[Inbox, asyncio.Task]] = {}
        self.last_opened = 0  # session ids increase: a lower one not in `sessions` has ended
        self.outbox: list[common_pb2.LinkFrame] = []
        self.ready = asyncio.Event()
        self.reading = True

    async def serve(self, frames: AsyncIterator[common_pb2.LinkFrames]) -> AsyncIterator[common_pb2.LinkFrames]:
        reader = asyncio.create_task(self.read(frames))
        try:
            while (self.reading or self.sessions or self.outbox) and not self.read_failed(reader):
                await self.ready.wait()
                self.ready.clear()
                frames, self.outbox = self.outbox, []
                for message in link_messages(frames, self.max_message_bytes):
                    yield message
            await reader  # raises what ended the reading
        finally:  # the link ended (the coordinator went away, or the server stops): so do its sessions
            reader.cancel()
            tasks = [task for _, task in self.sessions.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    @staticmethod
    def read_failed(reader: asyncio.Task) -> bool:
        return reader.done() and not reader.cancelled() and reader.exception() is not None

    async def read(self, frames: AsyncIterator[common_pb2.LinkFrames]) -> None:
        try:
            async for batch in frames:
                for frame in batch.frames:
                    self.receive(frame)
        finally:
            self.reading = False
            self.ready.set()

    def receive(self, frame: common_pb2.LinkFrame) -> None:
        entry = self.sessions.get(frame.session)
        if entry is None:
            if frame.session <= self.last_opened or frame.cancel:
                return  # it ended here (e.g. a step sent ahead of the final reply: ignored, as on a call)
            self.last_opened = frame.session
            inbox = Inbox()
            run = self.run(frame.session, inbox, frame.timeout_s or None)
            entry = inbox, asyncio.create_task(run, name=f"{self.name}-session")
            self.sessions[frame.session] = entry
        inbox, task = entry
        if frame.cancel:
            del self.sessions[frame.session]
            task.cancel()  # the handler's cleanup closes the session (a task not started yet has none to do)
            return
        if frame.message:
            try:
                inbox.put(self.request_type.FromString(frame.message))
            except DecodeError:
                return self.fail(frame.session, grpc.StatusCode.INVALID_ARGUMENT, "a frame's message does not parse")
            if inbox.unread > MAX_UNREAD:
                return self.fail(frame.session, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"more than {MAX_UNREAD} messages sent ahead of the replies")
        if frame.end:
            inbox.end()

    def fail(self, session: int, code: grpc.StatusCode, message: str) -> None:
        """End `session` with this status now: its handler is cancelled (and cleans up)."""
        _, task = self.sessions[session]
        task.cancel(message)
        self.finish(session, rich_status(code, message))

    async def run(self, session: int, inbox: Inbox, timeout_s: float | None) -> None:
        status = None
        try:
            replies = self.handler(inbox, SessionContext())
            async with asyncio.timeout(timeout_s), contextlib.aclosing(replies):
                async for reply in replies:
                    message = reply.SerializeToString()
                    if len(message) + FRAME_OVERHEAD_BYTES > self.max_message_bytes:
                        raise SessionAborted(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                         f"a reply of {len(message)} bytes is over the link's limit"))
                    self.send(common_pb2.LinkFrame(session=session, message=message))
        except SessionAborted as aborted:
            status = aborted.status
        except TimeoutError:
            status = rich_status(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline of {timeout_s:.3g} s exceeded")
        except asyncio.CancelledError:
            return  # by the coordinator or `fail` (which removed it), or with the whole link
        except Exception as error:  # noqa: BLE001 - one session's bug must not end the link's others
            log.exception("session handler failed", extra={"link": self.name})
            status = rich_status(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        self.finish(session, status)

    def finish(self, session: int, status: grpc.Status | None) -> None:
        if self.sessions.pop(session, None) is None:
            return
        frame = common_pb2.LinkFrame(session=session, end=True)
        if status is not None:
            frame.status = status_bytes(status)
        self.send(frame)

    def send(self, frame: common_pb2.LinkFrame) -> None:
        self.outbox.append(frame)
        self.ready.set()


def serve_link(handler: Callable, request_type, name: str, frames,
               max_message_bytes: int = MAX_LINK_MESSAGE_BYTES) -> AsyncIterator[common_pb2.LinkFrames]:
    """The replies of a service's `Link` RPC: `handler` (its `Session`) runs every session on it."""
    return LinkServer(handler, request_type, name, max_message_bytes).serve(frames)
