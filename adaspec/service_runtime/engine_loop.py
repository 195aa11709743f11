"""Continuous batching for a service: sessions talk from asyncio to an engine that steps elsewhere.

Sessions never touch the engine. They queue commands (open, submit, close); the loop applies every
queued command between two steps, then runs one step over everything that is ready, and hands each
session its result. So each step takes all the work that arrived while the previous one ran: no session
waits for another to finish. Where the engine runs (a worker thread, or a process of its own) is the
`EngineCore`'s business (`adaspec.service_runtime.engine_core`).

Gathering: a session's next message comes back some time after its reply: one coordinator round trip,
plus a draft step when the verify pool waits for drafts. Stepping the moment the first message arrives
splits the sessions into groups that then alternate, each step carrying a fraction of the batch for
nearly the full cost of a step. So the loop learns, per session, how long it takes to come back, and
  - waits for the sessions due back within a short window (half a recent step, at most `max_wait_ms`):
    merging a group that is late by less than that costs less than a step of its own;
  - otherwise waits, for at most one recent step, while fewer than `min_batch_fraction` of the sessions
    back or due back within that step are in. At the default of one half the sessions settle into at
    most two groups: draft and verify can work on one each at the same time, and no group is a sliver.

A session may queue its next step before it has read the previous step's result (a step without drafts
that the coordinator sent ahead): the loop applies it right after that step, so the next step starts at
once and the replies are written while it runs. Results wait, in order, until their session reads them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from adaspec.service_runtime import tracing
from adaspec.service_runtime.engine_core import Command, EngineCore, EngineCoreGone, Failed

log = logging.getLogger(__name__)
Undo = Callable[[Any], Command]  # a command's value -> the command that undoes it


class EngineStopped(RuntimeError):
    """The loop stopped (shutdown) before this session's result was ready."""


class EngineStepFailed(RuntimeError):
    """The engine step carrying this session raised; the loop goes on with the other sessions."""


class EngineLoop:
    def __init__(self, core: EngineCore, name: str, max_wait_ms: float = 10.0, gather_fraction: float = 0.5,
                 min_batch_fraction: float = 0.5, max_batch_wait_ms: float = 50.0):
        self.core, self.name = core, name
        self.max_wait_ms, self.gather_fraction = max_wait_ms, gather_fraction
        self.min_batch_fraction, self.max_batch_wait_ms = min_batch_fraction, max_batch_wait_ms
        self._replied_at: dict[int, float] = {}  # sessions answered, with no step queued: when
        self._queued: Counter[int] = Counter()  # per session, steps queued and not answered yet
        self._return_s: dict[int, float] = {}  # per session, EWMA of the time from reply to its next message
        # (command, its caller's future (None: posted), the session it queues a step for, its undo)
        self._commands: list[tuple[Command, asyncio.Future | None, int | None, Undo | None]] = []
        self._waiters: dict[int, asyncio.Future] = {}
        self._ready: dict[int, deque[tuple[Any, float]]] = {}  # results that arrived before their session asked
        self._forgotten: set[int] = set()  # sessions closed while the current step ran: their results are dropped
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.step_latency_ms = 0.0  # EWMA of engine step time
        self.steps = 0
        self.on_step: Callable[[float], None] | None = None  # told each step's time in ms (the metrics)
        self.trace_links: Callable[[], list] | None = None  # with tracing on: the session steps an engine step serves
        self._stopped: EngineStopped | None = None  # set once the engine can run nothing more

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.core.stop()
        self._stop_all(EngineStopped(f"{self.name} engine stopped"))

    async def call(self, command: Command, key: int | None = None, undo: Undo | None = None) -> Any:
        """Apply `command` before the next step and return its value (or raise its error). `key`: the
        session whose next step `command` queues, for one result (a command that raises queues nothing);
        it also times the session's return for gathering.

        If the caller is cancelled (its call's deadline, a cancel, a lost link) before the command is
        applied, the command is dropped; if while it is applied, `undo(value)` is posted: a session opened
        for a caller that is gone would otherwise hold its slot and KV blocks with nobody to close it."""
        if self._stopped is not None:
            raise self._stopped
        if key is not None:
            replied_at = self._replied_at.pop(key, None)
            if replied_at is not None:
                gap = time.perf_counter() - replied_at
                self._return_s[key] = 0.5 * self._return_s[key] + 0.5 * gap if key in self._return_s else gap
            self._queued[key] += 1
        done = asyncio.get_running_loop().create_future()
        self._commands.append((command, done, key, undo))
        self._wake.set()
        try:
            return await done
        except asyncio.CancelledError:  # a value that arrived as the caller was cancelled is undone here
            if undo is not None and done.done() and not done.cancelled() and done.exception() is None:
                self.post(undo(done.result()))
            raise

    async def result(self, key: int) -> tuple[Any, float]:
        """The next step result for `key` (a session id) and that step's duration in ms, in step order."""
        ready = self._ready.get(key)
        if ready:
            if len(ready) == 1:
                del self._ready[key]
            return ready.popleft()
        if self._stopped is not None:
            raise self._stopped
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        try:
            return await waiter
        finally:
            self._waiters.pop(key, None)

    def post(self, command: Command) -> None:
        """Apply `command` before the next step, without waiting (closing a session from a finally block)."""
        self._commands.append((command, None, None, None))
        self._wake.set()

    def forget(self, key: int) -> None:
        """Drop anything held for a closed session (and its result from a step running now; the session's
        close, posted after this, keeps it out of later steps)."""
        self._forgotten.add(key)
        self._ready.pop(key, None)
        self._replied_at.pop(key, None)
        self._queued.pop(key, None)
        self._return_s.pop(key, None)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def _run(self) -> None:
        ready_since = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._apply_commands()
            if not self.core.status.get("has_work"):
                ready_since = None  # what was ready is gone (closed): gathering starts again with the next work
                continue
            ready_since = ready_since or time.perf_counter()
            wait_until = self._gather_until(ready_since)
            if wait_until > time.perf_counter():
                try:
                    await asyncio.wait_for(self._wake.wait(), wait_until - time.perf_counter())
                except TimeoutError:
                    self._wake.set()
                continue
            gathered_since, ready_since = ready_since, None
            self._forgotten.clear()
            span = tracing.TRACER.start_span(f"{self.name} engine step", links=self.trace_links()) if (
                tracing.enabled() and self.trace_links is not None) else None
            start = time.perf_counter()
            try:
                results = await self.core.step()
            except EngineCoreGone as error:
                self._stop_all(EngineStopped(str(error)))
                if span is not None:
                    tracing.end_with_error(span, type(error).__name__, str(error))
                continue
            except Exception as error:  # a failed step fails the sessions in it, not the service
                log.exception("%s engine step failed", self.name)
                self._fail_all(EngineStepFailed(f"{self.name} engine step failed: {error!r}"))
                self._wake.set()
                if span is not None:
                    tracing.end_with_error(span, type(error).__name__, str(error))
                continue
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if span is not None:
                span.set_attributes({"adaspec.engine.sessions": len(results),
                                     "adaspec.engine.gathered_ms": (start - gathered_since) * 1e3})
                span.end()
            self.step_latency_ms = elapsed_ms if not self.steps else 0.8 * self.step_latency_ms + 0.2 * elapsed_ms
            self.steps += 1
            if self.on_step is not None:
                self.on_step(elapsed_ms)
            log.debug("step", extra={"engine": self.name, "sessions": len(results), "step_ms": round(elapsed_ms, 2),
                                     "gathered_ms": round((start - gathered_since) * 1e3, 2)})
            replied_at = time.perf_counter()
            for key, result in results.items():
                if key in self._forgotten:
                    continue
                self._unqueue(key, replied_at)
                waiter = self._waiters.pop(key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((result, elapsed_ms))
                else:
                    self._ready.setdefault(key, deque()).append((result, elapsed_ms))
            self._wake.set()  # more may be ready already; an idle engine just goes back to waiting

    def _gather_until(self, ready_since: float) -> float:
        """When to step, for work ready since `ready_since`: now (0.0), or later to let sessions join."""
        soon = ready_since + min(self.gather_fraction * self.step_latency_ms, self.max_wait_ms) / 1e3
        if time.perf_counter() < soon and self._due_back_by(soon):
            return soon
        later = ready_since + min(self.step_latency_ms, self.max_batch_wait_ms) / 1e3
        # too few in: this step would carry less than `min_batch_fraction` of the sessions in or due back
        in_now = len(self._queued)
        too_few = in_now < self.min_batch_fraction * (in_now + self._due_back_by(later))
        return later if too_few else 0.0

    def _due_back_by(self, when: float) -> int:
        """Sessions out that are expected back by `when` (one never timed yet is assumed to be)."""
        return sum(t + self._return_s.get(key, 0.0) <= when for key, t in self._replied_at.items())

    def _unqueue(self, key: int, answered_at: float | None) -> None:
        """One queued step of `key` answered (at `answered_at`) or refused (None)."""
        if self._queued[key] > 1:
            self._queued[key] -= 1  # its next step is queued already: still in
            return
        self._queued.pop(key, None)  # (a result with no step queued: a prefill after an open)
        if answered_at is not None:
            self._replied_at[key] = answered_at

    async def _apply_commands(self) -> None:
        queued, self._commands = self._commands, []
        for _, done, key, _ in queued:
            if done is not None and done.cancelled() and key is not None and key in self._queued:
                self._unqueue(key, None)
        queued = [entry for entry in queued if entry[1] is None or not entry[1].cancelled()]  # callers gone
        if not queued:
            return
        try:
            outcomes = await self.core.apply([command for command, _, _, _ in queued])
        except EngineCoreGone as error:
            self._stop_all(EngineStopped(str(error)))
            outcomes = [Failed(self._stopped)] * len(queued)
        for (command, done, key, undo), outcome in zip(queued, outcomes, strict=True):
            if isinstance(outcome, Failed):
                if key is not None and key in self._queued:
                    self._unqueue(key, None)
                if done is None:
                    log.error("%s: posted command %s failed: %r", self.name, command[0], outcome.error)
                elif not done.done():
                    done.set_exception(outcome.error)
            elif done is None:
                continue
            elif not done.done():
                done.set_result(outcome)
            elif done.cancelled() and undo is not None:  # its caller went away while it was applied
                self.post(undo(outcome))

    def _stop_all(self, error: EngineStopped) -> None:
        self._stopped = self._stopped or error
        self._fail_all(self._stopped)

    def _fail_all(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
