"""How a request fails: the status it ends with, from a replica's error."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from adaspec.errors import rich_status, rich_status_of
from adaspec.loadstore import ReplicaLoad

# a replica's verdict on the request itself, passed on to the caller as it is
PASS_THROUGH = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}


class RequestFailed(Exception):
    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


def downstream_status(error: grpc.aio.AioRpcError, replica: ReplicaLoad, tokens_sent: int = 0) -> grpc.Status:
    """The status to end the request with, for a failed verify call: a rejection passes through with its
    details; a replica that failed becomes UNAVAILABLE naming it and how far the request got."""
    code = error.code()
    if code in PASS_THROUGH or code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        status = rich_status_of(error)
        return rpc_status.to_status(status) if status is not None else rich_status(code, error.details() or code.name)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return rich_status(code, f"deadline exceeded after {tokens_sent} tokens")
    return rich_status(grpc.StatusCode.UNAVAILABLE,
                       f"verify replica {replica.replica_id} ({replica.address}) failed after {tokens_sent} tokens: "
                       f"{code.name}: {error.details()}")
