"""The coordinator refuses new requests while its event loop runs behind (gRPC cancels calls it holds unaccepted)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adaspec.client import Client
from adaspec.errors import ResourceExhausted, Unavailable
from adaspec.service_runtime.loop_lag import LoopLag


def test_a_blocked_loop_shows_behind_at_once_and_catches_up_after():
    async def scenario():
        lag = LoopLag(interval_s=0.02)
        assert lag.behind_s() == 0.0  # not started: never behind
        lag.start()
        await asyncio.sleep(0.1)
        idle = lag.behind_s()
        time.sleep(0.4)  # noqa: ASYNC251 - the loop is blocked: nothing else runs, as when the coordinator's Python saturates it
        blocked = lag.behind_s()
        await asyncio.sleep(0.01)
        late_tick = lag.behind_s()  # the tick that came late reports its lateness
        await asyncio.sleep(0.15)
        recovered = lag.behind_s()
        await lag.stop()
        return idle, blocked, late_tick, recovered

    idle, blocked, late_tick, recovered = asyncio.run(scenario())
    assert idle < 0.1
    assert blocked >= 0.35
    assert late_tick >= 0.3
    assert recovered < 0.1


def test_a_coordinator_whose_loop_stalled_refuses_with_resource_exhausted_then_serves_again(tmp_path):
    """The coordinator process is stopped (SIGSTOP) for longer than --max-loop-lag-s while a request waits for it:
    resumed, it refuses that request at once, precisely; a moment later it takes requests again (this coordinator
    has no replica, so a request taken ends UNAVAILABLE, which is how it shows it was not shed)."""
    port_file = tmp_path / "coordinator.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "adaspec.cli", "serve", "coordinator", "--port", "0", "--port-file", str(port_file),
         "--max-loop-lag-s", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.1)
        with Client(port_file.read_text(), max_retries=0) as client:
            with pytest.raises(Unavailable):  # connected, and taken: no replica
                client.generate("def fib(n):", max_tokens=4)
            with ThreadPoolExecutor(1) as pool:
                process.send_signal(signal.SIGSTOP)
                try:
                    stalled = pool.submit(client.generate, "def fib(n):", max_tokens=4)
                    time.sleep(2.0)
                finally:
                    process.send_signal(signal.SIGCONT)
                with pytest.raises(ResourceExhausted) as refused:
                    stalled.result(timeout=30)
            assert "event loop runs" in refused.value.message and refused.value.retry_delay == pytest.approx(1.0)
            time.sleep(0.5)
            with pytest.raises(Unavailable):  # caught up: taken again
                client.generate("def fib(n):", max_tokens=4)
    finally:
        process.terminate()
        process.wait(timeout=30)
