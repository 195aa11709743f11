"""Where a service's engine runs: in a worker thread of the service's process, or in a process of its own.

Either way the engine is driven the same way, through an *engine target*: an object with
  - command methods (open, submit, close, ...), applied between steps as `(method name, args)` commands;
  - `step() -> {session id: result}`, one engine step over everything ready;
  - `status() -> dict`: `has_work` (whether a step would do anything) and the load figures a heartbeat
    publishes, read after every command batch and every step, so the service never reads the engine
    while a step runs;
  - `info() -> dict`: what the service needs to know once (limits, where the tokenizer is).
Commands, results and errors are plain picklable data (token ids, dataclasses of lists), never tensors.

`ThreadCore` steps in a worker thread. Simple, but the step and the service's event loop (gRPC, replies,
detokenizing) are both Python and share one GIL: on 2 CPU cores every reply written while a step runs
stretches it (verify steps of 9-10 ms grew to 13-18 ms at batch 8). `ProcessCore` runs the target in a
child process driven over a pipe, as vLLM's engine core and SGLang's scheduler process do: the service
sends a batch of commands or a step and the child answers each message once, in order. Which one a
replica uses: `adaspec.service_runtime.replica.start_engine_core`.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from adaspec.service_runtime.lifetime import die_with_parent, set_process_name

log = logging.getLogger(__name__)

Command = tuple[str, tuple]  # (target method name, positional arguments)


class EngineCoreGone(RuntimeError):
    """The engine process exited (crashed or was killed): nothing more can be run."""


class StepError(RuntimeError):
    """The engine step raised (in the thread or the engine process); its message names the error."""


@dataclass
class Failed:
    """A command's outcome when it raised: the exception, re-raised to whoever queued the command."""

    error: Exception


class EngineCore(Protocol):
    info: dict
    status: dict
    on_gone: Callable[[], None] | None  # called once if the engine can run nothing more (its process died)

    async def apply(self, commands: list[Command]) -> list[Any]: ...  # each outcome: a value or Failed

    async def step(self) -> dict[int, Any]: ...

    async def stop(self) -> None: ...


def apply_commands(target, commands: list[Command]) -> list[Any]:
    outcomes = []
    for name, args in commands:
        try:
            outcomes.append(getattr(target, name)(*args))
        except Exception as error:  # noqa: BLE001 - the command's outcome, for its caller
            outcomes.append(Failed(error))
    return outcomes


class ThreadCore:
    """The target in this process; steps in one worker thread (`init_thread` runs first in it, see
    `same_torch_threads`), commands on the event loop between steps."""

    def __init__(self, target, name: str, init_thread: Callable[[], None] | None = None):
        self.target = target
        self.on_gone = None  # a thread does not vanish on its own
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-step", initializer=init_thread)
        self.info, self.status = target.info(), target.status()

    async def apply(self, commands: list[Command]) -> list[Any]:
        outcomes = apply_commands(self.target, commands)
        self.status = self.target.status()
        return outcomes

    async def step(self) -> dict[int, Any]:
        results, self.status = await asyncio.get_running_loop().run_in_executor(self._thread, self._step)
        return results

    def _step(self) -> tuple[dict[int, Any], dict]:
        return self.target.step(), self.target.status()

    async def stop(self) -> None:
        self._thread.shutdown(wait=False)  # a step still running ends on its own; none starts


class ProcessCore:
    """The target built as `factory(**kwargs)` in a child process ("spawn": no state inherited), with
    `threads` torch threads. `start` returns once the target is built, or raises with the child's error.
    The child dies with this process (PR_SET_PDEATHSIG, and it stops when the pipe closes); if the
    child dies, every call from then on raises EngineCoreGone and `on_gone` runs once."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict, name: str, threads: int | None = None,
                 log_level: str = "info", on_gone: Callable[[], None] | None = None):
        self.name, self.on_gone = name, on_gone
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=serve_target, name=f"{name}-core", daemon=True,
                                        args=(child_conn, factory, kwargs, threads, name, log_level))
        self._child_conn = child_conn
        self._replies: deque[asyncio.Future] = deque()
        self._reading = False  # the event loop watches the pipe
        self.gone = False
        self.info: dict = {}
        self.status: dict = {}

    def start(self, timeout_s: float | None = None) -> ProcessCore:
        """Blocks until the target is built (a real checkpoint may take minutes to load)."""
        self._process.start()
        self._child_conn.close()  # the child holds its end: EOF here once it exits
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.2):
            if deadline is not None and time.monotonic() > deadline:
                self._process.kill()
                raise TimeoutError(f"{self.name} engine process did not start within {timeout_s:.0f} s")
        try:
            kind, *payload = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise EngineCoreGone(f"{self.name} engine process exited with code {self._process.exitcode} while "
                                 f"starting (its error is in the log above)") from None
        if kind == "failed":
            self._process.join(5)
            raise payload[0]
        self.info, self.status = payload
        return self

    async def apply(self, commands: list[Command]) -> list[Any]:
        outcomes, self.status = await self._request(("apply", commands))
        return outcomes

    async def step(self) -> dict[int, Any]:
        results, self.status = await self._request(("step", None))
        if isinstance(results, StepError):
            raise results
        return results

    async def _request(self, message: tuple) -> Any:
        if self.gone:
            raise EngineCoreGone(f"{self.name} engine process is gone")
        loop = asyncio.get_running_loop()
        if not self._reading:  # from the first request on: EOF, even between requests, means the child died
            loop.add_reader(self._conn.fileno(), self._read_replies)
            self._reading = True
        reply = loop.create_future()
        self._replies.append(reply)
        try:
            self._conn.send(message)  # the loop awaits each reply before it sends again: the pipe never fills
        except OSError:
            self._lose_child()
        return await reply

    def _read_replies(self) -> None:
        try:
            while self._conn.poll():
                message = self._conn.recv()
                reply = self._replies.popleft()
                if not reply.done():
                    reply.set_result(message)
        except (EOFError, OSError):
            self._lose_child()

    def _lose_child(self) -> None:
        if self.gone:
            return
        self.gone = True
        asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self._process.join(1)  # EOF: it has exited or is exiting
        error = EngineCoreGone(f"{self.name} engine process exited with code {self._process.exitcode}")
        log.error("engine process gone", extra={"engine": self.name, "exitcode": self._process.exitcode})
        while self._replies:
            reply = self._replies.popleft()
            if not reply.done():
                reply.set_exception(error)
        if self.on_gone is not None:
            self.on_gone()

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._conn.closed:
            return
        if not self.gone:
            if self._reading:
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
            if not self._replies:
                try:
                    self._conn.send(("stop", None))
                except OSError:
                    pass
        self.gone = True
        self._conn.close()  # a child still in a step finds the pipe closed when it answers, and exits
        for reply in self._replies:
            if not reply.done():
                reply.set_exception(EngineCoreGone(f"{self.name} engine stopped"))
        self._replies.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, timeout_s)
        if self._process.is_alive():
            log.warning("engine process did not stop; killing it", extra={"engine": self.name})
            self._process.kill()
            self._process.join()


def serve_target(conn, factory: Callable[..., Any], kwargs: dict, threads: int | None, name: str,
                 log_level: str) -> None:
    """The engine process: build the target, then answer each message in order until "stop" or EOF."""
    from adaspec.service_runtime.logs import configure_logging

    configure_logging(f"{name}-core", log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops its engine; a terminal's Ctrl-C is its to handle
    die_with_parent(signal.SIGKILL)  # elsewhere than Linux, the closed pipe still stops it
    set_process_name(f"{name}-core")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        target = factory(**kwargs)
    except Exception as error:  # noqa: BLE001 - reported to the service, which fails to start with it
        conn.send(("failed", error))
        return
    conn.send(("ready", target.info(), target.status()))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return  # the service is gone
        if kind == "stop":
            return
        if kind == "apply":
            outcome = apply_commands(target, payload)
        else:
            try:
                outcome = target.step()
            except Exception as error:  # noqa: BLE001 - fails the sessions in the step, not the engine
                log.exception("engine step failed")
                outcome = StepError(repr(error))
        try:
            conn.send((outcome, target.status()))
        except (BrokenPipeError, ConnectionResetError):
            return  # the service is gone
