"""A small stack on the in-process load store (one verify replica of one session plus one queued, one
draft), each running its engine in a process of its own: capacity, a draft that stalls, a draft that dies
mid-request, and the last verify replica's engine process dying mid-stream.

Its own module, so the larger Redis-backed stack of `test_services.py` is down before this one starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from adaspec import AsyncClient, Client, SamplingParams
from adaspec.errors import ResourceExhausted, Unavailable
from adaspec.stack import Stack, StackConfig
from tests.conftest import HELD_OUT_SNIPPETS
from tests.test_services import replica_load


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    # engines in processes of their own (on CPU the default is a thread; `test_services.py` runs that)
    engine_process = ["--engine-core", "process"]
    config = StackConfig(verify_replicas=1, draft_replicas=1, draft_args=engine_process,
                         verify_args=["--max-num-seqs", "1", "--max-waiting", "1", *engine_process],
                         coordinator_args=["--ttl-s", "1.5", "--draft-timeout-s", "2"],
                         log_dir=str(tmp_path_factory.mktemp("small-logs")))
    with Stack(config) as stack:
        yield stack
    assert set(stack.exit_codes().values()) == {0}, f"graceful SIGTERM exit expected:\n{stack.exit_report()}"


def test_full_capacity_gets_resource_exhausted(small_stack):
    """One session running and one queued fill the replica (max_num_seqs 1 + max_waiting 1)."""

    async def fill_then_overflow():
        async with AsyncClient(small_stack.address, max_retries=0) as client:
            async def hold():
                async for _ in client.stream("def f():", max_tokens=2000, temperature=0, ignore_eos=True):
                    pass

            holders = [asyncio.create_task(hold()) for _ in range(2)]
            deadline = time.monotonic() + 30
            while replica_load(small_stack, "verify-0").sessions < 2:
                assert time.monotonic() < deadline, "the two holding requests were never admitted"
                await asyncio.sleep(0.05)
            try:
                with pytest.raises(ResourceExhausted) as caught:
                    await client.generate("def g():", max_tokens=4)
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
            return caught.value

    error = asyncio.run(fill_then_overflow())
    assert error.retry_delay is not None


def test_steps_at_k_0_do_not_wait_for_a_stalled_draft_and_a_drafting_request_drops_it(small_stack, bundled_engine):
    """The draft replica stops answering (SIGSTOP). A request whose every step is at k = 0 never waits for it:
    it finishes at once though its draft session is open there. One that drafts waits `--draft-timeout-s` for
    its first drafts, then goes on without the draft. Both outputs are the target's."""
    expected = bundled_engine.generate(["def f():"], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                                       policy="none")[0].token_ids
    draft = small_stack.processes["draft-0"].popen
    os.kill(draft.pid, signal.SIGSTOP)
    try:
        with Client(small_stack.address, max_retries=0, timeout=30) as client:
            start = time.monotonic()
            plain = client.generate("def f():", max_tokens=12, temperature=0, ignore_eos=True, policy="fixed:0")
            plain_s = time.monotonic() - start
            start = time.monotonic()
            drafting = client.generate("def f():", max_tokens=12, temperature=0, ignore_eos=True, policy="fixed:2")
            drafting_s = time.monotonic() - start
    finally:
        os.kill(draft.pid, signal.SIGCONT)
    assert plain.token_ids == drafting.token_ids == expected
    assert plain.stats.draft_replica == "draft-0" and plain.stats.draft_tokens == 0 and plain_s < 1.5
    assert drafting.stats.draft_replica == "" and drafting.stats.draft_tokens == 0 and drafting_s >= 2.0


def test_a_draft_dying_mid_request_degrades_to_plain_decoding(small_stack, bundled_engine):
    prompt = HELD_OUT_SNIPPETS[2]
    expected = bundled_engine.generate([prompt], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))[0]
    with Client(small_stack.address) as client:
        stream = client.stream(prompt, max_tokens=200, temperature=0, ignore_eos=True, policy="fixed:4")
        chunks = [next(stream)]
        small_stack.kill("draft-0")
        chunks += list(stream)
    assert [t for c in chunks for t in c.token_ids] == expected.token_ids


def engine_process(stack, name: str) -> int:
    """The pid of a replica's engine process (named `<kind>-core`, see `adaspec.serving.engine_core`)."""
    service = stack.processes[name].popen.pid
    for task in os.listdir(f"/proc/{service}/task"):
        for child in open(f"/proc/{service}/task/{task}/children").read().split():
            if open(f"/proc/{child}/comm").read().strip().endswith("-core"):
                return int(child)
    raise LookupError(f"{name} has no engine process")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the engine process through /proc")
def test_the_last_verify_replicas_engine_dying_mid_stream_gets_unavailable_and_the_replica_exits(small_stack):
    """A crash inside the replica (its engine process), not of the whole replica: the replica says so to
    the request in flight and exits with an error, instead of serving without an engine."""
    replica = small_stack.processes["verify-0"]
    with Client(small_stack.address, max_retries=0) as client:
        stream = client.stream("def f():", max_tokens=2000, temperature=0, ignore_eos=True, policy="none")
        next(stream)
        os.kill(engine_process(small_stack, "verify-0"), signal.SIGKILL)
        with pytest.raises(Unavailable, match="verify-0"):
            for _ in stream:
                pass
        assert replica.popen.wait(15) != 0
        small_stack.killed.add("verify-0")  # its exit code is checked here, not by the fixture
        assert "its engine process exited" in replica.log_path.read_text()
        with pytest.raises(Unavailable):
            client.generate("def f():", max_tokens=4)
