"""How far behind an asyncio event loop runs: the lateness of a timer that should fire every `interval_s`.

A front whose loop falls seconds behind also takes new calls that late: gRPC core holds each incoming call until
the server asks for it, one per turn of the loop, and cancels a call left waiting for 30 s
(`grpc.server_max_unrequested_time_in_server`) before the server ever sees it — the client gets a bare CANCELLED
and nothing is logged. The coordinator refuses new requests with RESOURCE_EXHAUSTED while its loop is behind, so
the calls it does take are answered at once, the work already running finishes, and the loop catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class LoopLag:
    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self._last_lag_s = 0.0
        self._due = time.monotonic() + interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._due = time.monotonic() + self.interval_s
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def behind_s(self) -> float:
        """Seconds the loop is behind: the last tick's lateness, or how overdue the next tick is already (a loop
        blocked right now shows at once, not after the tick it has not run yet). 0 until started."""
        if self._task is None:
            return 0.0
        return max(self._last_lag_s, time.monotonic() - self._due)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self._last_lag_s = max(0.0, now - self._due)
            self._due = now + self.interval_s
