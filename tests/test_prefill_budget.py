"""Chunked prefill sized by the decoding requests' TPOT SLOs (`adaspec.speculation.prefill_budget`): the pure rule
against a known latency model, then the engine carrying it out without changing a single output token."""

from __future__ import annotations

import math

import pytest

from adaspec import Engine, SamplingParams
from adaspec.speculation.latency_profile import LatencyModel, LatencyProfile
from adaspec.speculation.prefill_budget import (
    MIN_PROMPT_TOKENS,
    SLO_MARGIN,
    WaitingPrompt,
    longest_step_ms,
    prompt_token_budget,
)
from adaspec.speculation.step_state import RequestState

# t = 10 ms + 0.2 ms per query token (this project's CPU, roughly: the forward's fixed cost dominates)
MODEL = LatencyModel((10.0, 0.0, 0.2, 0.0, 0.0))


def decoding(tpot_ms: float | None, out: int = 11, since_first_ms: float = 150.0, remaining: int = 50) -> RequestState:
    return RequestState(context_tokens=100, output_tokens=out, remaining_tokens=remaining, greedy=True,
                        since_first_token_s=since_first_ms / 1e3, tpot_slo_s=None if tpot_ms is None else tpot_ms / 1e3)


ONE_LONG_PROMPT = (WaitingPrompt(2000),)


def budget(requests, prompts=ONE_LONG_PROMPT, max_tokens=2000, step_tokens=()) -> int:
    return prompt_token_budget(MODEL, requests, batch=len(requests), query_tokens=len(requests), context=100.0,
                               overhead_ms=0.0, prompts=list(prompts), max_tokens=max_tokens, step_tokens=step_tokens)


def test_the_longest_step_a_request_can_take_is_its_own_token_and_its_slack_spread_over_its_tokens_left():
    # 10 tokens after the first in 150 ms against 20 ms each, less the margin: 17 ms each, so 20 ms ahead, spread
    # over the 50 tokens left; this token's 17
    assert SLO_MARGIN == 0.85
    assert longest_step_ms(decoding(20.0)) == pytest.approx(17 + 20 / 50)
    assert longest_step_ms(decoding(20.0, remaining=1)) == pytest.approx(17 + 20)  # its last token may spend it all
    assert longest_step_ms(decoding(12.0)) == pytest.approx(0.85 * 12 - (150 - 0.85 * 12 * 10) / 50)  # catching up
    assert longest_step_ms(decoding(None)) == math.inf
    assert longest_step_ms(decoding(20.0, remaining=0)) == math.inf
    assert longest_step_ms(decoding(2.0)) == math.inf  # 2 ms a token is lost whatever happens


def test_steps_of_the_longest_length_until_the_end_bring_the_tpot_to_the_margin_exactly():
    slo_ms, out, since_ms, left = 30.0, 8, 120.0, 24
    step_ms = longest_step_ms(decoding(slo_ms, out=out, since_first_ms=since_ms, remaining=left))
    assert (since_ms + left * step_ms) / (out + left - 1) == pytest.approx(SLO_MARGIN * slo_ms)


def test_a_step_expected_to_commit_several_tokens_of_a_request_may_be_that_many_times_longer():
    """A step verifying drafts commits E_i tokens: steps of E_i · X_i each until its end keep the same final TPOT. Its
    prompt chunk grows with it: without it, steps with drafts left prompts the minimum and, past saturation, they
    queued."""
    r = decoding(20.0)
    assert longest_step_ms(r, 2.5) == pytest.approx(2.5 * longest_step_ms(r))
    slo_ms, out, since_ms, left, tokens = 30.0, 8, 120.0, 24, 3.0
    step_ms = longest_step_ms(decoding(slo_ms, out=out, since_first_ms=since_ms, remaining=left), tokens)
    assert (since_ms + left / tokens * step_ms) / (out + left - 1) == pytest.approx(SLO_MARGIN * slo_ms)
    plain = budget([decoding(20.0), decoding(40.0)])
    assert budget([decoding(20.0), decoding(40.0)], step_tokens=[1.0, 1.0]) == plain
    assert budget([decoding(20.0), decoding(40.0)], step_tokens=[2.5]) > plain  # the tighter one verifies drafts


def test_without_a_decoding_slo_a_step_takes_every_prompt_token_it_has_room_for():
    assert budget([]) == 2000
    assert budget([decoding(None)]) == 2000
    assert budget([decoding(None)], max_tokens=300) == 300


def test_a_tight_decoding_slo_cuts_prompts_into_chunks_that_keep_it_and_a_looser_one_allows_more():
    tight, loose = budget([decoding(20.0)]), budget([decoding(40.0)])
    cap = longest_step_ms(decoding(20.0))
    assert MIN_PROMPT_TOKENS < tight < loose < 2000
    assert MODEL.predict(2, 1 + tight, 100.0) <= cap < MODEL.predict(2, 1 + tight + 1, 100.0)
    # the tightest request of the step decides
    assert budget([decoding(40.0), decoding(20.0), decoding(None)]) == budget([decoding(20.0)] * 3)


def test_prompts_always_progress_and_a_lost_cause_does_not_hold_them_back():
    behind = decoding(13.0)  # 40 ms behind an SLO it can still meet: no room at all this step
    assert budget([behind]) == MIN_PROMPT_TOKENS
    assert budget([decoding(2.0)]) == 2000  # lost whatever happens: no bound
    assert budget([behind], max_tokens=10) == 10


def test_waiting_prompts_get_what_they_need_to_meet_their_ttft_first_come_first_served():
    cap_only = budget([decoding(20.0)], prompts=[WaitingPrompt(1000)])
    step_ms = max(longest_step_ms(decoding(20.0)), MODEL.predict(2, 1 + cap_only, 100.0))
    # 300 + 700 tokens, the second due in 100 ms: 1000 tokens over the steps of that long that fit in it
    urgent = budget([decoding(20.0)], prompts=[WaitingPrompt(300), WaitingPrompt(700, ttft_left_ms=100.0)])
    assert urgent == math.ceil(1000 * step_ms / 100.0) > cap_only
    # far from its deadline, or past it (lost: no claim), a prompt takes what the cap leaves
    assert budget([decoding(20.0)], prompts=[WaitingPrompt(1000, ttft_left_ms=1e6)]) == cap_only
    assert budget([decoding(20.0)], prompts=[WaitingPrompt(1000, ttft_left_ms=-5.0)]) == cap_only


@pytest.fixture(scope="module")
def slow_prefill_profile() -> LatencyProfile:
    """1 s per query token: any prompt chunk breaks a 200 ms TPOT, so each step carries MIN_PROMPT_TOKENS."""
    return LatencyProfile(LatencyModel((10.0, 0.0, 1000.0, 0.0, 0.0)))


def run_with_a_long_prompt_arriving(engine: Engine, tpot_ms: float | None) -> tuple[list, list[int]]:
    """A decoding request (TPOT SLO `tpot_ms`), then a 200-token prompt: the outputs and each step's prompt tokens."""
    chunks, schedule = [], engine.scheduler.schedule_prefills

    def recording(token_budget):
        scheduled = schedule(token_budget)
        chunks.append(sum(n for _, n in scheduled))
        return scheduled

    engine.scheduler.schedule_prefills = recording
    greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    first = engine.add_request("def fib(n):", greedy, "none", tpot_ms=tpot_ms)
    engine.step()  # its prefill, alone: the first token
    long_prompt = list(range(5, 205))
    second = engine.add_request(long_prompt, greedy, "none", tpot_ms=tpot_ms)
    while not all(engine._sequences[i].finished for i in (first, second)):
        engine.step()
    return [engine.pop_output(i).token_ids for i in (first, second)], [c for c in chunks if c]


def test_the_engine_chunks_a_prompt_to_keep_a_decoding_slo_and_the_outputs_do_not_change(slow_prefill_profile):
    outputs, chunks = run_with_a_long_prompt_arriving(Engine(seed=0, profile=slow_prefill_profile), tpot_ms=200.0)
    reference, whole = run_with_a_long_prompt_arriving(Engine(seed=0, profile=slow_prefill_profile), tpot_ms=None)
    assert whole[1:] == [200]  # without an SLO the prompt goes in one step (after the first request's prefill)
    assert chunks[1:] == [MIN_PROMPT_TOKENS] * 6 + [200 - 6 * MIN_PROMPT_TOKENS]
    assert outputs == reference
