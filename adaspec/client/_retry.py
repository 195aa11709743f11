"""One call's deadline and retry budget, shared by the sync and async clients.

A call is retried only when nothing of it reached the caller yet (no response message arrived, so nothing was
generated on the caller's behalf and re-sending it is idempotent), and only for UNAVAILABLE, or
RESOURCE_EXHAUSTED when the server attached a RetryInfo. The delay is exponential backoff with jitter, at
least the server's RetryInfo delay; a retry that could not start before the deadline is not attempted (the
last error is raised instead).
"""

from __future__ import annotations

import random
import time

import grpc

from adaspec.errors import AdaSpecError, DeadlineExceeded, from_rpc_error


def is_retryable(error: AdaSpecError) -> bool:
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None


class Attempts:
    def __init__(self, timeout: float | None, max_retries: int, initial_backoff: float, max_backoff: float,
                 rng: random.Random) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.rng = rng
        self.retries = 0

    def remaining(self) -> float | None:
        """Seconds left for the next attempt (its gRPC timeout); raises DeadlineExceeded when none are."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {self.timeout:g} s exceeded after {self.retries + 1} attempt(s)"
                                   if self.retries else f"deadline of {self.timeout:g} s exceeded")
        return left

    def delay_or_raise(self, rpc_error: grpc.RpcError, received: bool = False) -> float:
        """Seconds to wait before retrying after `rpc_error`; raises it as an `AdaSpecError` when the call is
        not retried (a response already `received`, not retryable, or out of retries or time)."""
        error = from_rpc_error(rpc_error)
        delay = None if received else self.backoff(error)
        if delay is None:
            raise error from rpc_error
        return delay

    def backoff(self, error: AdaSpecError) -> float | None:
        """Seconds to wait before retrying after `error` (which arrived before any response), or None."""
        if self.retries >= self.max_retries or not is_retryable(error):
            return None
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** self.retries)
        delay = self.rng.uniform(ceiling / 2, ceiling)  # "equal jitter": spread, but never near zero
        if error.retry_delay is not None:
            delay = max(delay, error.retry_delay)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        self.retries += 1
        return delay
