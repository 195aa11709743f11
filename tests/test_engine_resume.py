"""Resuming a request from tokens generated elsewhere (a verify replica that failed mid-request)."""

from __future__ import annotations

import pytest

from adaspec import SamplingParams
from tests.conftest import HELD_OUT_SNIPPETS


def run(engine, prompt, params, policy="fixed:4", resume_output=()):
    request_id = engine.add_request(prompt, params, policy, resume_output=resume_output)
    while engine.has_unfinished():
        engine.step()
    return engine.pop_output(request_id)


GREEDY_40 = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def whole(bundled_engine):
    """The uninterrupted greedy run that every cut is compared with."""
    return run(bundled_engine, HELD_OUT_SNIPPETS[1], GREEDY_40)


@pytest.mark.parametrize("cut", [1, 7, 30])
def test_a_resumed_greedy_request_goes_on_exactly(bundled_engine, whole, cut):
    resumed = run(bundled_engine, HELD_OUT_SNIPPETS[1], GREEDY_40, resume_output=whole.token_ids[:cut])
    assert resumed.token_ids == whole.token_ids and resumed.text == whole.text
    assert resumed.prompt_token_ids == whole.prompt_token_ids and resumed.finish_reason == "length"


def test_a_stop_string_across_the_resume_point_is_found(bundled_engine):
    prompt = HELD_OUT_SNIPPETS[0]
    free = run(bundled_engine, prompt, GREEDY_40)
    decode = bundled_engine.tokenizer.decode
    # a cut whose text ends inside the stop string, six characters from the 10th
    cut = next(i for i in range(1, len(free.token_ids)) if 10 < len(decode(free.token_ids[:i])) < 16)
    stop = free.text[10:16]
    assert free.text.find(stop) == 10
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop=[stop])
    whole = run(bundled_engine, prompt, params)
    assert whole.finish_reason == "stop" and whole.text == free.text[:10]
    resumed = run(bundled_engine, prompt, params, resume_output=free.token_ids[:cut])
    assert (resumed.token_ids, resumed.text, resumed.finish_reason) == (whole.token_ids, whole.text, "stop")


def test_resumed_output_is_validated(bundled_engine):
    params = SamplingParams(max_tokens=5, temperature=0.0)
    with pytest.raises(ValueError, match="nothing to generate"):
        bundled_engine.add_request("def f():", params, resume_output=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="resumed output token ids"):
        bundled_engine.add_request("def f():", params, resume_output=[1, -3])
