"""What a replica's engine target reports for its heartbeat: `queued_tokens` means the same on both kinds
(committed tokens its KV cache does not hold yet, so its engine still has to run them through the model)."""

from __future__ import annotations

from adaspec.services.draft.draft_target import DraftTarget
from adaspec.services.verify.verify_target import VerifyTarget

from adaspec import SamplingParams
from adaspec.engine.draft_engine import DraftEngine, DraftWork
from adaspec.engine.verify_engine import VerifyEngine
from adaspec.speculation.draft_budget import DraftBudget
from adaspec.v1 import common_pb2

PARAMS = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def test_queued_tokens_are_committed_tokens_not_yet_in_the_kv_cache():
    verify = VerifyTarget(VerifyEngine(seed=0))
    opened = verify.open("def fib(n):", PARAMS, [])
    prompt = opened.prompt_token_ids
    assert verify.status()["queued_tokens"] == len(prompt)  # the prompt waits for its prefill
    (result,) = verify.step().values()
    assert verify.status()["queued_tokens"] == 1  # the token it just committed: fed with the next drafts

    draft = DraftTarget(DraftEngine())
    seq_id = draft.open(prompt, PARAMS, seed=0)
    assert draft.status()["queued_tokens"] == len(prompt)  # fed with the session's first step
    draft.queue(DraftWork(seq_id, 0, result.token_ids, DraftBudget(4)))
    assert draft.status()["queued_tokens"] == len(prompt) + 1
    (drafts,) = draft.step().values()
    assert draft.status()["queued_tokens"] == 0  # everything committed is in the cache (and drafts beyond it)
    accepted = list(common_pb2.DraftTokens.FromString(drafts).token_ids[:2])
    draft.queue(DraftWork(seq_id, 2, [*accepted, 7], DraftBudget(4)))  # two drafts accepted, then the target's token
    assert draft.status()["queued_tokens"] == 1  # the accepted drafts are in the cache already
