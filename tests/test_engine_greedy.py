"""Greedy speculative output is token-identical to `transformers.generate` on the target alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from adaspec import Engine, SamplingParams
from tests.conftest import HELD_OUT_SNIPPETS, hf_greedy

# every policy on the bundled pair; the random models (several families, GQA) take the plain ones and adaspec
POLICIES = ["none", "fixed:1", "fixed:4", "threshold:0.5", "hf-heuristic", "batch-schedule", "ema", "goodput",
            "adaspec-paper", "adaspec"]
FAMILY_POLICIES = ["none", "fixed:1", "fixed:4", "adaspec"]
MAX_NEW = 24


def check_identical(engine: Engine, reference, prompts: list[list[int]], policy: str) -> list:
    outs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, temperature=0.0), policy=policy)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(reference, prompt, MAX_NEW), f"policy {policy}, prompt {prompt[:8]}..."
    return outs


@pytest.mark.parametrize("policy", POLICIES)
def test_bundled_pair_matches_target_alone(bundled_engine, bundled_reference, policy):
    prompts = [bundled_engine.tokenizer(p)["input_ids"] for p in HELD_OUT_SNIPPETS]
    assert len({len(p) for p in prompts}) > 4, "batch 8 must mix prompt lengths"
    check_identical(bundled_engine, bundled_reference, prompts[:1], policy)  # batch 1
    outs = check_identical(bundled_engine, bundled_reference, prompts, policy)  # batch 8
    stats = [o.stats for o in outs]
    if policy.startswith("fixed:"):
        assert sum(s["accepted_tokens"] for s in stats) > 0, "a trained draft must get some tokens accepted"
        assert all(s["mean_k"] <= int(policy.split(":")[1]) for s in stats)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_random_models_match_target_alone(random_pairs, family):
    target, draft = random_pairs[family]
    engine = Engine(str(target), str(draft), kv_cache_memory=16 * 2**20)
    reference = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 17, 40, 5, 64, 9, 33, 1]
    prompts = [torch.randint(1, 4096, (n,), generator=generator).tolist() for n in lengths]
    for policy in FAMILY_POLICIES:
        check_identical(engine, reference, prompts[:1], policy)
        check_identical(engine, reference, prompts, policy)
    assert all(free == total for free, total in engine.kv_usage().values())


def test_chunked_prefill_matches(bundled_engine, bundled_reference):
    """A prompt longer than the per-step token budget is prefilled over several steps."""
    engine = Engine(max_num_batched_tokens=32)
    prompt = bundled_engine.tokenizer("\n".join(HELD_OUT_SNIPPETS))["input_ids"]
    assert len(prompt) > 3 * 32
    check_identical(engine, bundled_reference, [prompt], "fixed:4")
