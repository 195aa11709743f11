"""EngineLoop: one step over every ready session, results to the right session, failures contained, gathering."""

import asyncio
import os
import subprocess
import sys
import time

import pytest

from adaspec.service_runtime.engine_core import ThreadCore
from adaspec.service_runtime.engine_loop import EngineLoop, EngineStepFailed


class CountingEngine:
    """An engine target. Each step answers every session with work queued: (its oldest value, how many
    sessions shared the step)."""

    def __init__(self, fail_once: bool = False, step_s: float = 0.0):
        self.queued: dict[int, list[int]] = {}
        self.opened: set[int] = set()
        self.batches: list[list[int]] = []
        self.starts: list[float] = []
        self.fail_once, self.step_s = fail_once, step_s

    def info(self) -> dict:
        return {}

    def status(self) -> dict:
        return {"has_work": bool(self.queued)}

    def queue(self, key: int, value: int) -> None:
        self.queued.setdefault(key, []).append(value)

    def drop(self, key: int) -> None:
        self.queued.pop(key, None)

    def open(self, key: int) -> int:
        self.opened.add(key)
        return key

    def close(self, key: int) -> None:
        self.opened.discard(key)

    def step(self) -> dict[int, tuple[int, int]]:
        self.starts.append(time.perf_counter())
        work = {key: values.pop(0) for key, values in self.queued.items()}
        self.queued = {key: values for key, values in self.queued.items() if values}
        self.batches.append(sorted(work))
        time.sleep(self.step_s)
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("boom")
        return {key: (value, len(work)) for key, value in work.items()}


async def exchange(loop: EngineLoop, engine: CountingEngine, key: int, value: int):
    await loop.call(("queue", (key, value)), key=key)
    result, _ = await loop.result(key)
    return result


def test_sessions_queued_together_share_a_step_and_get_their_own_results():
    async def main():
        engine = CountingEngine()
        loop = EngineLoop(ThreadCore(engine, "test"), "test")
        loop.start()
        results = await asyncio.gather(*(exchange(loop, engine, k, 10 * k) for k in range(5)))
        await loop.stop()
        return results, engine.batches

    results, batches = asyncio.run(main())
    assert results == [(10 * k, 5) for k in range(5)]
    assert batches == [[0, 1, 2, 3, 4]]


def test_a_failed_step_fails_only_its_sessions_and_the_loop_goes_on():
    async def main():
        engine = CountingEngine(fail_once=True)
        loop = EngineLoop(ThreadCore(engine, "test"), "test")
        loop.start()
        with pytest.raises(EngineStepFailed, match="boom"):
            await exchange(loop, engine, 1, 1)
        after = await exchange(loop, engine, 2, 2)
        await loop.stop()
        return after

    assert asyncio.run(main()) == (2, 1)


def test_a_session_due_back_soon_is_gathered_into_the_next_step():
    """Session 0 returns 2 ms after each reply, session 1 at once: with a 20 ms step, they share steps."""

    async def main():
        engine = CountingEngine(step_s=0.02)
        loop = EngineLoop(ThreadCore(engine, "test"), "test", max_wait_ms=20)
        loop.start()

        async def session(key: int, think_s: float):
            for i in range(6):
                await exchange(loop, engine, key, i)
                await asyncio.sleep(think_s)

        await asyncio.gather(session(0, 0.002), session(1, 0.0))
        await loop.stop()
        return engine.batches

    batches = asyncio.run(main())
    assert sum(len(b) == 2 for b in batches) >= 4, batches


def test_a_step_waits_for_half_of_the_sessions_due_back_within_a_step():
    """Session 0 returns at once, sessions 1-3 12 ms after each reply (too late for the 2 ms "soon" window).
    Stepping whenever work is ready lets session 0 run alone every other step; waiting (at most one step)
    until half of those due back are in keeps all four in one step."""

    async def run(min_batch_fraction: float) -> list[list[int]]:
        engine = CountingEngine(step_s=0.02)
        loop = EngineLoop(ThreadCore(engine, "test"), "test", max_wait_ms=2,
                          min_batch_fraction=min_batch_fraction)
        loop.start()

        async def session(key: int, think_s: float):
            for i in range(8):
                await exchange(loop, engine, key, i)
                await asyncio.sleep(think_s)

        await asyncio.gather(session(0, 0.0), *(session(k, 0.012) for k in (1, 2, 3)))
        await loop.stop()
        return engine.batches

    merged, split = asyncio.run(run(0.5)), asyncio.run(run(0.0))
    assert len(merged) <= 9 and sum(len(b) == 4 for b in merged) >= 7, merged  # 8 rounds of 4
    assert len(split) >= 11, split  # session 0 runs ahead alone, then the others finish without it


def test_a_step_queued_before_the_previous_result_is_read_runs_next_and_results_keep_their_order():
    """A step sent ahead: queued while the previous one runs, it runs right after it."""

    async def main():
        engine = CountingEngine(step_s=0.02)
        loop = EngineLoop(ThreadCore(engine, "test"), "test")
        loop.start()
        for value in (1, 2, 3):  # three steps queued, no result read yet
            await loop.call(("queue", (0, value)), key=0)
        await asyncio.sleep(0.2)  # all three have run
        results = [(await asyncio.wait_for(loop.result(0), 5))[0] for _ in range(3)]
        await loop.stop()
        return results, engine.batches

    results, batches = asyncio.run(main())
    assert results == [(1, 1), (2, 1), (3, 1)]
    assert batches == [[0], [0], [0]]


def test_sessions_closed_while_their_step_runs_are_not_waited_for():
    """Their results are dropped and they are not counted as due back: a lone session after them steps at once
    (counted as three sessions due back, it would wait a whole step for them first)."""

    async def main():
        engine = CountingEngine(step_s=0.2)
        loop = EngineLoop(ThreadCore(engine, "test"), "test", max_batch_wait_ms=1000)
        loop.start()
        calls = asyncio.gather(*(loop.call(("queue", (key, key)), key=key) for key in (1, 2, 3)))
        await calls
        while not engine.batches:
            await asyncio.sleep(0.005)
        for key in (1, 2, 3):  # what a cancelled call's handler does
            loop.forget(key)
            loop.post(("drop", (key,)))
        await asyncio.sleep(0.3)  # the step ends
        sent = time.perf_counter()
        assert await exchange(loop, engine, 4, 4) == (4, 1)
        waited = engine.starts[-1] - sent
        await loop.stop()
        return engine.batches, waited

    batches, waited = asyncio.run(main())
    assert batches == [[1, 2, 3], [4]]
    assert waited < 0.1, waited



def test_gathering_starts_afresh_after_the_ready_work_was_closed():
    """Work ready, then closed while the loop gathers for it: the next work gathers from its own arrival. (Timed
    from the closed work, the window would be long past: session 1 would step alone at once, and session 2, due
    back 20 ms later, in a step of its own.)"""

    async def main():
        engine = CountingEngine(step_s=0.2)
        loop = EngineLoop(ThreadCore(engine, "test"), "test", max_wait_ms=100)
        loop.start()
        await asyncio.gather(*(exchange(loop, engine, key, key) for key in (0, 1, 2)))  # all three due back
        await loop.call(("queue", (0, 0)), key=0)  # ready: the loop gathers, sessions 1 and 2 being due back
        loop.forget(0)  # session 0 closes meanwhile: nothing is ready any more
        loop.post(("drop", (0,)))
        await asyncio.sleep(0.3)
        first = asyncio.create_task(exchange(loop, engine, 1, 1))
        await asyncio.sleep(0.02)
        results = [await exchange(loop, engine, 2, 2), await first]
        await loop.stop()
        return results, engine.batches

    results, batches = asyncio.run(main())
    assert batches == [[0, 1, 2], [1, 2]] and results == [(2, 2), (1, 2)]

class SlowApplyCore(ThreadCore):
    """Commands take a while to apply (an engine process's pipe); `then` runs on the event loop just before
    the outcomes are handed out."""

    def __init__(self, target, then=None):
        super().__init__(target, "test")
        self.then = then

    async def apply(self, commands):
        await asyncio.sleep(0.05)
        if self.then is not None:
            asyncio.get_running_loop().call_soon(self.then)
        return await super().apply(commands)


def open_session(loop: EngineLoop, key: int):
    return loop.call(("open", (key,)), undo=lambda opened: ("close", (opened,)))


@pytest.mark.parametrize("when", ["before it is applied", "while it is applied", "as its value arrives"])
def test_an_open_whose_caller_is_cancelled_leaves_no_session_behind(when):
    """A call cancelled (deadline, cancel, lost link) while its open waits for a step, while the engine applies
    it, or just as its value comes back: the session is never opened, or is closed again."""

    async def main():
        engine = CountingEngine(step_s=0.1)
        caller: asyncio.Task | None = None
        core = SlowApplyCore(engine, then=lambda: caller.cancel()) if when == "as its value arrives" else \
            SlowApplyCore(engine) if when == "while it is applied" else ThreadCore(engine, "test")
        loop = EngineLoop(core, "test")
        loop.start()
        if when == "before it is applied":
            await loop.call(("queue", (9, 9)), key=9)  # a step runs now: the open waits behind it
        caller = asyncio.create_task(open_session(loop, 1))
        if when != "as its value arrives":
            await asyncio.sleep(0.02)
            caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0.3)  # the step and any posted close
        assert await open_session(loop, 2) == 2  # the loop goes on
        await loop.stop()
        return engine.opened

    assert asyncio.run(main()) == {2}


STEP_THREAD_PROBE = """
import asyncio, os, sys, torch
from adaspec.service_runtime.engine_core import ThreadCore
from adaspec.service_runtime.engine_loop import EngineLoop
from adaspec.service_runtime.replica import same_torch_threads

torch.set_num_threads(1)
threads = lambda: len(os.listdir("/proc/self/task"))

class Probe:
    info = status = lambda self: {"has_work": True}

    def step(self):
        before = threads()
        a = torch.randn(512, 512)
        for _ in range(20):
            a = (a @ a).tanh()
        return {0: threads() - before}  # OS threads that intra-op parallelism started

async def main():
    init = same_torch_threads() if sys.argv[1] == "1" else None
    loop = EngineLoop(ThreadCore(Probe(), "probe", init_thread=init), "probe")
    loop.start()
    await loop.call(("status", ()))
    started, _ = await loop.result(0)
    await loop.stop()
    print(started)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="needs /proc and 2 cores")
def test_the_step_thread_keeps_the_process_torch_thread_count():
    """OpenMP's thread count is per thread: without `same_torch_threads` the step thread runs on every core."""

    def threads_started(init: bool) -> int:
        out = subprocess.run([sys.executable, "-c", STEP_THREAD_PROBE, str(int(init))], capture_output=True, text=True,
                             timeout=120, check=True)
        return int(out.stdout.split()[-1])

    assert threads_started(init=False) > 0  # the probe sees the problem it guards against
    assert threads_started(init=True) == 0
