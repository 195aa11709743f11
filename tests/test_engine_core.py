"""ProcessCore: an engine target in a child process, driven over a pipe; what happens when either side dies."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from adaspec.service_runtime.engine_core import EngineCoreGone, Failed, ProcessCore
from adaspec.service_runtime.engine_loop import EngineLoop, EngineStopped


class EchoTarget:
    """Each step answers every session with its queued value and the process that stepped."""

    def __init__(self, step_s: float = 0.0):
        self.queued: dict[int, str] = {}
        self.step_s = step_s

    @classmethod
    def build(cls, step_s: float = 0.0, fail: bool = False) -> "EchoTarget":
        if fail:
            raise ValueError("no such checkpoint: /nowhere")
        return cls(step_s)

    def info(self) -> dict:
        return {"pid": os.getpid()}

    def status(self) -> dict:
        return {"has_work": bool(self.queued), "queued": len(self.queued)}

    def queue(self, key: int, value: str) -> int:
        if key in self.queued:
            raise ValueError(f"step: session {key} has a step queued already")
        self.queued[key] = value
        return len(self.queued)

    def step(self) -> dict[int, tuple[str, int]]:
        time.sleep(self.step_s)
        work, self.queued = self.queued, {}
        return {key: (value, os.getpid()) for key, value in work.items()}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (exited, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_commands_and_steps_run_in_the_engine_process_and_errors_come_back_as_raised():
    async def main():
        core = ProcessCore(EchoTarget.build, {}, "echo").start(timeout_s=60)
        try:
            outcomes = await core.apply([("queue", (1, "a")), ("queue", (2, "b")), ("queue", (1, "again"))])
            status_after_commands = core.status
            results = await core.step()
            return core.info["pid"], outcomes, status_after_commands, results, core.status
        finally:
            await core.stop()

    pid, outcomes, status, results, status_after_step = asyncio.run(main())
    assert pid != os.getpid()
    assert outcomes[:2] == [1, 2]
    assert isinstance(outcomes[2], Failed) and isinstance(outcomes[2].error, ValueError)
    assert "session 1 has a step queued" in str(outcomes[2].error)
    assert status == {"has_work": True, "queued": 2}
    assert results == {1: ("a", pid), 2: ("b", pid)}
    assert status_after_step == {"has_work": False, "queued": 0}
    assert gone(pid)


def test_an_engine_that_fails_to_build_fails_the_start_with_its_error():
    with pytest.raises(ValueError, match="no such checkpoint"):
        ProcessCore(EchoTarget.build, {"fail": True}, "echo").start(timeout_s=60)


def test_a_dead_engine_process_fails_waiting_and_later_sessions_and_says_so_once():
    """Sessions waiting on a step fail with EngineStopped; later calls fail at once; `on_gone` runs once."""

    async def main():
        gone_calls = []
        core = ProcessCore(EchoTarget.build, {"step_s": 5.0}, "echo", on_gone=lambda: gone_calls.append(1))
        loop = EngineLoop(core.start(timeout_s=60), "echo")
        loop.start()
        try:
            await loop.call(("queue", (1, "a")), key=1)
            waiting = asyncio.ensure_future(loop.result(1))
            await asyncio.sleep(0.5)  # the step is running in the engine process
            os.kill(core.info["pid"], signal.SIGKILL)
            with pytest.raises(EngineStopped, match="engine process exited with code -9"):
                await asyncio.wait_for(waiting, 10)
            with pytest.raises(EngineStopped):
                await asyncio.wait_for(loop.call(("queue", (2, "b")), key=2), 10)
            return gone_calls
        finally:
            await loop.stop()

    assert asyncio.run(main()) == [1]


def test_an_engine_process_dying_between_requests_is_noticed_at_once():
    """Not at the next request: the replica must stop advertising itself as soon as its engine is gone."""

    async def main():
        noticed = asyncio.Event()
        core = ProcessCore(EchoTarget.build, {}, "echo", on_gone=noticed.set).start(timeout_s=60)
        try:
            await core.apply([("queue", (1, "a"))])
            os.kill(core.info["pid"], signal.SIGKILL)
            await asyncio.wait_for(noticed.wait(), 10)
            with pytest.raises(EngineCoreGone):
                await core.step()
        finally:
            await core.stop()

    asyncio.run(main())


def test_stop_during_a_step_ends_the_engine_process_without_waiting_for_the_step():
    async def main():
        core = ProcessCore(EchoTarget.build, {"step_s": 30.0}, "echo").start(timeout_s=60)
        await core.apply([("queue", (1, "a"))])
        step = asyncio.ensure_future(core.step())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await core.stop(timeout_s=2)
        with pytest.raises(EngineCoreGone):
            await step
        return core.info["pid"], time.monotonic() - started

    pid, took = asyncio.run(main())
    assert took < 5 and gone(pid)


ORPHAN_PROBE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from adaspec.service_runtime.engine_core import ProcessCore
    from test_engine_core import EchoTarget

    if __name__ == "__main__":
        core = ProcessCore(EchoTarget.build, {}, "echo").start(timeout_s=60)
        print(core.info["pid"], flush=True)
        time.sleep(60)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_engine_process_dies_with_its_service(tmp_path):
    """A SIGKILLed service leaves no engine process behind (holding a GPU's memory, on a real replica)."""
    probe = tmp_path / "probe.py"
    probe.write_text(ORPHAN_PROBE)
    service = subprocess.Popen([sys.executable, str(probe), os.path.dirname(__file__)], stdout=subprocess.PIPE,
                               text=True)
    try:
        engine_pid = int(service.stdout.readline())
        service.kill()
        service.wait(10)
        deadline = time.monotonic() + 10
        while not gone(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(engine_pid)
    finally:
        service.kill()
