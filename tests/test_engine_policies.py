"""Policies inside the engine: k = 0 costs nothing and leaves no stale drafter, batch rules see the batch."""

from __future__ import annotations

from adaspec import SamplingParams
from adaspec.speculation.acceptance import AcceptanceCalibrator
from adaspec.speculation.draft_budget import NO_DRAFTS, DraftBudget
from adaspec.speculation.policies import Policy
from tests.conftest import HELD_OUT_SNIPPETS


class PauseThenDraft(Policy):
    """k = 0 for the first `pause` steps of every request, then k = 4; remembers the batches it was given, and what
    the drafter had not seen of each request."""

    name = "pause-then-draft"

    def __init__(self, pause: int):
        self.pause, self.batches, self.lags = pause, [], []

    def budgets(self, requests, ctx):
        self.batches.append(len(requests))
        self.lags.append([r.draft_lag_tokens for r in requests])
        budgets = []
        for r in requests:
            r.memo["calls"] = r.memo.get("calls", 0) + 1
            budgets.append(DraftBudget(4) if r.memo["calls"] > self.pause else NO_DRAFTS)
        return budgets


def recorded_drafts(engine, monkeypatch):
    """Wrap the drafter: every propose call's drafted tokens, and how many draft forwards ran."""
    calls, forwards = [], [0]
    propose, forward = engine.drafter.propose, engine.drafter.runner.forward

    def record_propose(seqs, budgets):
        drafts = propose(seqs, budgets)
        calls.append({s.seq_id: list(t) for s, t in zip(seqs, drafts.tokens)})
        return drafts

    def count_forward(items):
        forwards[0] += 1
        return forward(items)

    monkeypatch.setattr(engine.drafter, "propose", record_propose)
    monkeypatch.setattr(engine.drafter.runner, "forward", count_forward)
    return calls, forwards


def test_steps_at_k_0_run_no_draft_forward_and_the_drafter_is_not_stale_after_them(bundled_engine, monkeypatch):
    """TensorRT-LLM's bug: after its schedule drops to k = 0 the drafter's state goes stale and acceptance
    collapses when k comes back. Here a k = 0 step runs no draft forward at all, and the first step that drafts
    again catches the draft up on every committed token: it proposes exactly what a drafter that saw every
    token proposes (a fresh request on the same tokens), and gets as many accepted over the next steps."""
    engine = bundled_engine
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    policy = PauseThenDraft(pause=12)
    request_id = engine.add_request(HELD_OUT_SNIPPETS[1], params, policy=policy)
    seq = engine._sequences[request_id]
    calls, forwards = recorded_drafts(engine, monkeypatch)
    try:
        for _ in range(13):  # the prefill, then 12 steps at k = 0
            engine.step()
        assert forwards[0] == 0 and not calls and seq.num_output_tokens == 13
        prompt = len(seq.token_ids) - 13
        # what the first draft step will feed beyond its one token: the prompt and every token since
        assert [lags[0] for lags in policy.lags] == [prompt + n - 1 for n in range(1, 13)]
        committed = list(seq.token_ids)
        for _ in range(5):  # drafting again
            engine.step()
        # then caught up at every step: at most the last accepted draft, never drafted on, besides the new token
        assert policy.lags[12][0] == prompt + 12 and all(lags[0] <= 1 for lags in policy.lags[13:])
        resumed, resumed_accepted = calls[0][request_id], seq.stats.accepted_tokens
        engine.abort(request_id)
        # a fresh request whose prefill gives the last committed token, then drafts on all of them
        fresh_id = engine.add_request(committed[:-1], params, policy="fixed:4")
        engine.step()
        assert engine._sequences[fresh_id].token_ids == committed
        for _ in range(5):
            engine.step()
        assert calls[-5][fresh_id] == resumed and len(resumed) == 4
        assert engine._sequences[fresh_id].stats.accepted_tokens == resumed_accepted > 0
    finally:
        for rid in list(engine._sequences):
            engine.abort(rid)
            engine.pop_output(rid)
    assert all(free == total for free, total in engine.kv_usage().values())


def test_one_policy_instance_sees_the_whole_batch(bundled_engine):
    """A batch-level rule is asked once per step with every request that uses it, not once per request."""
    policy = PauseThenDraft(pause=0)
    outs = bundled_engine.generate(HELD_OUT_SNIPPETS[:6], SamplingParams(max_tokens=8, temperature=0.0,
                                                                         ignore_eos=True), policy=policy)
    assert max(policy.batches) == 6 and all(o.stats["draft_tokens"] for o in outs)
    again = bundled_engine.generate(HELD_OUT_SNIPPETS[:3], SamplingParams(max_tokens=8, temperature=0.0),
                                    policy="ema")
    assert bundled_engine.planner.policy("ema") is bundled_engine.planner.policy(" ema")  # one instance per string
    assert len(again) == 3


def test_learned_state_reaches_the_calibration_and_the_latency_models():
    from adaspec import Engine

    engine = Engine(kv_cache_memory=32 * 2**20)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    engine.generate(HELD_OUT_SNIPPETS[:4], params, policy="adaspec")  # needs a profile: the quick one is measured
    assert engine.planner.verify_latency is not None and engine.planner.draft_latency is not None
    assert engine.planner.verify_latency.count > 0 and engine.planner.draft_latency.count > 0
    engine.planner.calibrator = AcceptanceCalibrator(decay=1.0)
    outs = engine.generate(HELD_OUT_SNIPPETS[:4], params, policy="fixed:3")
    counts = engine.planner.calibrator.counts["greedy"]
    accepted = sum(o.stats["accepted_tokens"] for o in outs)
    steps = sum(o.stats["steps"] for o in outs)  # each step tests its accepted drafts and at most one rejected
    assert sum(counts.accepted) == accepted > 0
    assert accepted < sum(counts.tested) <= accepted + steps
    assert all(free == total for free, total in engine.kv_usage().values())
