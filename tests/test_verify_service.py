"""The verify replica in process (engine and servicer, no transport): steps sent ahead, published acceptance."""

from __future__ import annotations

import asyncio

import pytest
from adaspec.services.verify.service import VerifyService
from adaspec.services.verify.verify_target import NO_DRAFTS, VerifyTarget, proposal_from_proto

from adaspec import SamplingParams
from adaspec.engine.verify_engine import VerifyEngine
from adaspec.service_runtime.convert import params_to_proto
from adaspec.service_runtime.engine_core import ThreadCore
from adaspec.v1 import common_pb2, verify_pb2

PROMPT = "def fib(n):"


def in_process_service(engine: VerifyEngine) -> VerifyService:
    return VerifyService(ThreadCore(VerifyTarget(engine), "verify"), engine.tokenizer, "verify-test", "default",
                         "in-process")


def greedy_drafts(tokens: list[int]) -> common_pb2.DraftTokens:
    return common_pb2.DraftTokens(token_ids=tokens, sparse_k=1, topk_ids=tokens, topk_probs=[1.0] * len(tokens))


async def run_session(service: VerifyService, steps, **slo: float) -> list[verify_pb2.VerifyResponse]:
    """Open a greedy session (with `slo`: ttft_ms, tpot_ms) and send `steps(committed_so_far)` drafts after each
    reply, until it returns None."""
    params = params_to_proto(SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    outbox: asyncio.Queue = asyncio.Queue()
    await outbox.put(verify_pb2.VerifyRequest(open=verify_pb2.VerifyOpen(prompt=PROMPT, params=params, **slo)))

    async def requests():
        while (message := await outbox.get()) is not None:
            yield message

    replies, committed = [], 0
    async for reply in service.Session(requests(), context=None):
        replies.append(reply)
        committed += len(reply.token_ids)
        drafts = None if reply.finish_reason else steps(committed)
        await outbox.put(None if drafts is None else verify_pb2.VerifyRequest(step=drafts))
    return replies


def test_published_acceptance_is_per_step_and_ignores_steps_without_drafts(bundled_engine):
    expected = bundled_engine.generate([PROMPT], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True),
                                       policy="none")[0].token_ids
    wrong = lambda i: (expected[i] + 1) % len(bundled_engine.tokenizer)  # noqa: E731

    async def scenario():
        service = in_process_service(VerifyEngine(seed=0))
        service.loop.start()
        try:
            # without drafts: nothing to say about acceptance, however many steps
            await run_session(service, lambda n: common_pb2.DraftTokens() if n < 8 else None)
            assert service.acceptance.count == 0
            # every step: the target's next token (accepted), then a wrong one (rejected)
            replies = await run_session(service, lambda n: greedy_drafts([expected[n], wrong(n + 1)])
                                        if n + 2 < len(expected) else None)
            return service.snapshot(), replies
        finally:
            await service.loop.stop()

    load, replies = asyncio.run(scenario())
    assert [t for r in replies for t in r.token_ids] == expected[: sum(len(r.token_ids) for r in replies)]
    assert all(r.num_accepted == 1 for r in replies[1:])
    assert load.acceptance_rate == 0.5


def test_only_steps_without_drafts_queue_behind_an_unverified_step_and_finishing_drops_them():
    engine = VerifyEngine(seed=0)
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    seq = engine.open(PROMPT, params)
    assert [r.seq_id for r in engine.step()] == [seq.seq_id]  # prefill: the first token
    engine.submit(seq.seq_id, NO_DRAFTS)
    engine.submit(seq.seq_id, NO_DRAFTS)  # sent ahead
    drafts = proposal_from_proto(greedy_drafts([5]))
    with pytest.raises(ValueError, match="step.token_ids: drafts sent before the previous step was verified"):
        engine.submit(seq.seq_id, drafts)
    assert [len(r.token_ids) for r in engine.step()] == [1]
    final = engine.step()
    assert final[0].finish_reason == "length" and seq.finished
    assert not engine.has_ready_work()  # the step sent ahead of the final one is dropped
    engine.close(seq.seq_id)


def test_steps_sent_ahead_run_one_per_engine_step_and_the_final_reply_ends_the_session(bundled_engine):
    """The client sends every step at once, more than the request needs: one engine step each, in order,
    and the session ends with the final reply, its KV blocks back."""
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    expected = bundled_engine.generate([PROMPT], params, policy="none")[0].token_ids

    async def scenario():
        engine = VerifyEngine(seed=0)
        free = engine.target_runner.kv_cache.blocks.num_free_blocks
        service = in_process_service(engine)
        service.loop.start()

        async def requests():
            yield verify_pb2.VerifyRequest(open=verify_pb2.VerifyOpen(prompt=PROMPT, params=params_to_proto(params)))
            for _ in range(20):
                yield verify_pb2.VerifyRequest(step=common_pb2.DraftTokens())

        try:
            replies = [reply async for reply in service.Session(requests(), context=None)]
            await asyncio.sleep(0.05)  # the posted close
            return replies, service.loop.steps, engine.target_runner.kv_cache.blocks.num_free_blocks - free
        finally:
            await service.loop.stop()

    replies, steps, free_blocks_change = asyncio.run(scenario())
    assert [t for r in replies for t in r.token_ids] == expected
    assert len(replies) == steps == 8 and replies[-1].finish_reason == "length"
    assert free_blocks_change == 0


def test_a_session_cancelled_while_its_open_waits_for_a_step_leaves_no_sequence_behind():
    """A deadline or cancel landing while the open waits behind a running step: nothing stays in the engine
    (a ghost holds a slot and KV blocks for good, and every step would wait for it)."""
    params = params_to_proto(SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))

    async def scenario():
        engine = VerifyEngine(seed=0)
        free = engine.target_runner.kv_cache.blocks.num_free_blocks
        service = in_process_service(engine)
        service.loop.start()

        async def session(prompt: str):
            async def requests():
                yield verify_pb2.VerifyRequest(open=verify_pb2.VerifyOpen(prompt=prompt, params=params))
                await asyncio.Event().wait()  # the coordinator sends nothing more

            return [reply async for reply in service.Session(requests(), context=None)]

        try:
            long_prefill = asyncio.create_task(session(PROMPT * 150))  # a step of ~1000 prompt tokens
            while not service.loop.steps and not engine.scheduler.running:
                await asyncio.sleep(0.001)
            opens = [asyncio.create_task(session(PROMPT)) for _ in range(4)]
            await asyncio.sleep(0.005)
            for task in [*opens, long_prefill]:
                task.cancel()
            await asyncio.gather(*opens, long_prefill, return_exceptions=True)
            await asyncio.sleep(0.5)  # the running step ends; posted closes apply before the next
            await service.loop.call(("status", ()))
            return len(engine._sequences), engine.target_runner.kv_cache.blocks.num_free_blocks - free
        finally:
            await service.loop.stop()

    sequences, free_blocks_change = asyncio.run(scenario())
    assert (sequences, free_blocks_change) == (0, 0)


def test_a_text_prompt_is_tokenized_off_the_engine_step_and_the_slos_reach_the_engine(bundled_engine):
    """The engine (between two steps of every session) gets the prompt's token ids, the same as it would have
    made of the text; the text is tokenized in a worker thread of the service. The request's SLOs come with them
    (they size the prompt chunks of the steps the session shares)."""
    opened, slos = [], []

    class RecordingTarget(VerifyTarget):
        def open(self, prompt, params, resume_output, ttft_ms=None, tpot_ms=None):
            opened.append(prompt)
            seen = super().open(prompt, params, resume_output, ttft_ms, tpot_ms)
            state = self.engine._sequences[seen.seq_id].request_state
            slos.append((state.ttft_slo_s, state.tpot_slo_s))
            return seen

    async def scenario():
        engine = VerifyEngine(seed=0)
        service = VerifyService(ThreadCore(RecordingTarget(engine), "verify"), engine.tokenizer, "verify-test",
                                "default", "in-process")
        service.loop.start()
        try:
            return await run_session(service, lambda n: common_pb2.DraftTokens() if n < 4 else None,
                                     ttft_ms=500.0, tpot_ms=40.0)
        finally:
            await service.loop.stop()

    replies = asyncio.run(scenario())
    assert opened == [bundled_engine.tokenizer(PROMPT)["input_ids"]]
    assert slos == [(0.5, 0.04)]
    assert list(replies[0].prompt_token_ids) == opened[0]
