"""The coordinator refuses new requests while its event loop runs behind (gRPC cancels calls it holds unaccepted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from adaspec.client import Client
from adaspec.errors import ResourceExhausted
from adaspec.service_runtime.loop_lag import LoopLag


def test_a_blocked_loop_shows_behind_at_once_and_catches_up_after():
    async def scenario():
        lag = LoopLag(interval_s=0.02)
        assert lag.behind_s() == 0.0  # not started: never behind
        lag.start()
        await asyncio.sleep(0.1)
        idle = lag.behind_s()
        time.sleep(0.4)  # the loop is blocked: nothing else runs, as when the coordinator's Python saturates it
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


def test_a_coordinator_behind_its_loop_refuses_with_resource_exhausted_and_a_retry_delay(tmp_path):
    """A threshold no loop can meet stands for a loop far behind: every new request is refused, at once and
    precisely (the shedding itself, not a replica: this coordinator has none)."""
    port_file = tmp_path / "coordinator.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "adaspec.cli", "serve", "coordinator", "--port", "0", "--port-file", str(port_file),
         "--max-loop-lag-s", "1e-9"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.1)
        with Client(port_file.read_text(), max_retries=0) as client:
            with pytest.raises(ResourceExhausted) as refused:
                client.generate("def fib(n):", max_tokens=4)
        assert "event loop runs" in refused.value.message and refused.value.retry_delay == pytest.approx(1.0)
    finally:
        process.terminate()
        process.wait(timeout=30)
