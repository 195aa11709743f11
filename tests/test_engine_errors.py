"""Bad input gets a clear error naming the problem, and nothing is left behind."""

from __future__ import annotations

import json
import shutil

import pytest

from adaspec import Engine, SamplingParams
from adaspec.engine.model_loader import BUNDLED_DRAFT, BUNDLED_TARGET


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("seed", -3),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
        ("ignore_eos", "yes"),
    ],
)
def test_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}"):
        SamplingParams(**{field: value})


def test_bad_prompts_and_policies(bundled_engine):
    engine = bundled_engine
    whole = engine.kv_usage()
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate([""])
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate([[]])
    with pytest.raises(ValueError, match=r"prompt has \d+ tokens; the context is"):
        engine.generate([[5] * engine.max_model_len])
    with pytest.raises(ValueError, match="token ids must be in"):
        engine.generate([[5, 999_999]])
    with pytest.raises(ValueError, match="unknown policy"):
        engine.generate(["x"], policy="sometimes")
    with pytest.raises(ValueError, match="fixed:K"):
        engine.generate(["x"], policy="fixed:99")
    with pytest.raises(ValueError, match="2 prompts but 1 SamplingParams"):
        engine.generate(["a", "b"], [SamplingParams()])
    # A bad prompt anywhere in the batch: nothing of the batch runs.
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate(["fine", ""])
    assert engine.kv_usage() == whole and not engine.has_unfinished()


def test_target_without_draft_only_plain_decoding():
    engine = Engine(str(BUNDLED_TARGET))
    with pytest.raises(ValueError, match="needs a draft model"):
        engine.generate(["x"], policy="fixed:2")
    assert len(engine.generate(["x = "], SamplingParams(max_tokens=3), policy="none")[0].token_ids) <= 3


def test_mismatched_vocabularies_name_both_models(tmp_path):
    draft = tmp_path / "other-draft"
    shutil.copytree(BUNDLED_DRAFT, draft)
    tokenizer = json.loads((draft / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 100)
    vocab["renamed-token"] = vocab.pop(token)
    (draft / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="do not share a vocabulary") as error:
        Engine(str(BUNDLED_TARGET), str(draft))
    message = str(error.value)
    assert str(draft) in message and str(BUNDLED_TARGET) in message and "renamed-token" in message


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Engine(str(tmp_path))


def test_stop_conditions(bundled_engine):
    engine = bundled_engine
    base = engine.generate(["def main():\n"], SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
                           policy="fixed:4")[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 40
    # stop token id: output ends at its first occurrence
    stop_id = base.token_ids[5]
    out = engine.generate(["def main():\n"], SamplingParams(max_tokens=40, temperature=0.0,
                                                              stop_token_ids=[stop_id]), policy="fixed:4")[0]
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[: base.token_ids.index(stop_id) + 1]
    # stop string: the text ends before it
    stop_text = base.text[10:14]
    out = engine.generate(["def main():\n"], SamplingParams(max_tokens=40, temperature=0.0, stop=[stop_text]),
                          policy="fixed:4")[0]
    assert out.finish_reason == "stop" and out.text == base.text[: base.text.index(stop_text)]


def test_a_step_that_raises_leaves_nothing_behind(bundled_engine, monkeypatch):
    """`generate` aborts and forgets every request of the call when a step raises mid-way (here the target's
    forward, once the prompts are prefilled): KV blocks back, no request left, and the engine still works."""
    engine = bundled_engine
    whole = engine.kv_usage()
    forward, calls = engine.target_runner.forward, []

    def fails_on_the_second_forward(items):
        calls.append(len(items))
        if len(calls) == 2:
            raise RuntimeError("injected forward failure")
        return forward(items)

    monkeypatch.setattr(engine.target_runner, "forward", fails_on_the_second_forward)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    with pytest.raises(RuntimeError, match="injected forward failure"):
        engine.generate(["def fib(n):", "import os\n"], params, policy="fixed:4")
    assert len(calls) == 2
    assert engine.kv_usage() == whole and not engine.has_unfinished() and engine._sequences == {}
    monkeypatch.undo()
    assert len(engine.generate(["def fib(n):"], params, policy="fixed:4")[0].token_ids) == 16
