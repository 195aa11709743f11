"""A request's session with one replica: a session stream on the coordinator's link to it, and its lease.

`open_session` leases the replica the router picks for the request and opens the session on the link;
`Session.close` half-closes it (or cancels it after an error) and always releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
from adaspec.services.coordinator.request_failure import RequestFailed
from adaspec.services.coordinator.router import NoCapacity, NoReplica, Router, RouteRequest

from adaspec.errors import rich_status
from adaspec.loadstore import ReplicaLoad
from adaspec.service_runtime.link_client import Links
from adaspec.v1 import draft_pb2, verify_pb2

# Sessions run on the replica's link (one stream per coordinator and replica): (method, serialize, parse)
SESSION_LINKS = {
    "verify": (f"/{verify_pb2.DESCRIPTOR.services_by_name['Verify'].full_name}/Link",
               verify_pb2.VerifyRequest.SerializeToString, verify_pb2.VerifyResponse.FromString),
    "draft": (f"/{draft_pb2.DESCRIPTOR.services_by_name['Draft'].full_name}/Link",
              draft_pb2.DraftRequest.SerializeToString, draft_pb2.DraftResponse.FromString),
}


class Session:
    """One open session stream (a `LinkStream`) and the lease it holds."""

    def __init__(self, call, replica: ReplicaLoad, lease_id: str, router: Router):
        self.call, self.replica, self.lease_id, self.router = call, replica, lease_id, router
        self.sent_ahead = False  # the message of the next exchange is already on the wire

    async def exchange(self, message, next_message=None):
        """Send `message` (unless it went ahead) and read the reply. `next_message`, when the next exchange's
        message is known before this reply (a step without drafts), goes out at once: the replica finds it
        waiting when its step ends instead of waiting a round trip through the coordinator."""
        if not self.sent_ahead:
            await self.call.write(message)
        self.sent_ahead = next_message is not None
        if next_message is not None:
            await self.call.write(next_message)
        return await self.receive()

    async def receive(self):
        reply = await self.call.read()
        if reply is grpc.aio.EOF:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details=f"{self.replica.replica_id} ended the session")
        return reply

    async def close(self, ok: bool) -> None:
        try:
            if ok:
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                    await self.call.done_writing()
        finally:  # also when cancelled while half-closing
            self.call.cancel()  # no-op once the server has ended the call
            # shielded: a second cancel landing in the store's round trip would leave the lease held until it expires
            await asyncio.shield(self.router.release(self.replica, self.lease_id))


async def open_session(router: Router, links: Links, kind: str, request_id: str, exclude: set[str],
                       route: RouteRequest, deadline: float | None) -> Session:
    """A session with the `kind` ("verify" or "draft") replica the router leases for `route`, none of `exclude`;
    `deadline` (time.monotonic()) bounds it. Raises RequestFailed: UNAVAILABLE without a replica to try,
    RESOURCE_EXHAUSTED when every one is full."""
    lease_id = f"{request_id}/{uuid.uuid4().hex[:12]}"  # a session's own: request ids are the caller's
    try:
        replica = await router.acquire(kind, lease_id, exclude, route)
    except NoReplica as error:
        raise RequestFailed(rich_status(grpc.StatusCode.UNAVAILABLE, str(error), retry_after_s=1.0)) from error
    except NoCapacity as error:
        raise RequestFailed(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), retry_after_s=0.5)) from error
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    call = links.open(replica.address, *SESSION_LINKS[kind], timeout=timeout)
    return Session(call, replica, lease_id, router)
