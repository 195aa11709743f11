"""The verify servicer in process (no transport): what it publishes about acceptance."""

from __future__ import annotations

import asyncio

from adaspec import SamplingParams
from adaspec.engine.verify_engine import VerifyEngine
from adaspec.serving.convert import params_to_proto
from adaspec.v1 import common_pb2, verify_pb2
from services.verify.service import VerifyService

PROMPT = "def fib(n):"


def greedy_drafts(tokens: list[int]) -> common_pb2.DraftTokens:
    return common_pb2.DraftTokens(token_ids=tokens, sparse_k=1, topk_ids=tokens, topk_probs=[1.0] * len(tokens))


async def run_session(service: VerifyService, steps) -> list[verify_pb2.VerifyResponse]:
    """Open a greedy session and send `steps(committed_so_far)` drafts after each reply, until it returns None."""
    params = params_to_proto(SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    outbox: asyncio.Queue = asyncio.Queue()
    await outbox.put(verify_pb2.VerifyRequest(open=verify_pb2.VerifyOpen(prompt=PROMPT, params=params)))

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
        service = VerifyService(VerifyEngine(seed=0), "verify-test", "default", "in-process")
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
