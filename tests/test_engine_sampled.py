"""Speculative sampling through the whole engine is distributed as the target alone.

The bundled pair (the draft is distilled from the target: q is close to p but not equal), top_k = 3 so that four
generated tokens have at most 81 outcomes. The exact probability of each outcome is computed by
teacher-forcing the target (HF implementation); thousands of seeded requests are compared with it by a
chi-square test. The first token comes from the prompt's forward; tokens 2-4 come from speculative steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

import adaspec.engine.engine as engine_module
from adaspec import Engine, SamplingParams
from adaspec.engine.model_loader import BUNDLED_TARGET
from kernels.rejection_sampler_ref import rejection_sample
from kernels.sampling import processed_probs

PROMPT = [0, 452, 286, 1340, 8, 78]  # "def fib(n"
NUM_TOKENS, TOP_K, TEMPERATURE, SAMPLES = 4, 3, 1.5, 3000


@pytest.fixture(scope="module")
def engine():
    return Engine(max_num_seqs=512, kv_cache_memory=64 * 2**20)


@pytest.fixture(scope="module")
def exact() -> dict[tuple[int, ...], float]:
    """P(x1..x4 | prompt) under the processed target distribution, for every reachable sequence."""
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_TARGET, dtype=torch.float32).eval()
    probs = {(): 1.0}
    for _ in range(NUM_TOKENS):
        prefixes = list(probs)
        with torch.no_grad():
            logits = torch.cat([model(torch.tensor([PROMPT + list(x)])).logits[:, -1] for x in prefixes])
        n = len(prefixes)
        p = processed_probs(logits, torch.full((n,), TEMPERATURE), torch.full((n,), TOP_K), torch.ones(n))
        probs = {
            prefix + (token,): probs[prefix] * p[i, token].item()
            for i, prefix in enumerate(prefixes)
            for token in p[i].nonzero()[:, 0].tolist()
        }
    return probs


def sample_pvalue(engine: Engine, exact: dict) -> float:
    params = [SamplingParams(max_tokens=NUM_TOKENS, temperature=TEMPERATURE, top_k=TOP_K, seed=i, ignore_eos=True)
              for i in range(SAMPLES)]
    outs = engine.generate([PROMPT] * SAMPLES, params, policy="fixed:3")
    counts = dict.fromkeys(exact, 0)
    for out in outs:
        counts[tuple(out.token_ids)] += 1  # KeyError = a token outside the target's top-k support
    keys = sorted(exact, key=exact.get)
    expected = np.array([exact[k] for k in keys]) * SAMPLES
    observed = np.array([counts[k] for k in keys], dtype=float)
    # Pool the rarest outcomes so that every cell expects at least 5 draws.
    cut = int(np.searchsorted(np.cumsum(expected), 5.0)) + 1
    expected = np.concatenate([[expected[:cut].sum()], expected[cut:]])
    observed = np.concatenate([[observed[:cut].sum()], observed[cut:]])
    return chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def test_speculative_sampling_is_distributed_as_target(engine, exact):
    assert len(exact) > 40
    assert sample_pvalue(engine, exact) > 1e-4
    stats = engine.generate([PROMPT] * 64, SamplingParams(max_tokens=NUM_TOKENS, temperature=TEMPERATURE,
                                                          top_k=TOP_K, ignore_eos=True), policy="fixed:3")
    acceptance = sum(o.stats["accepted_tokens"] for o in stats) / sum(o.stats["draft_tokens"] for o in stats)
    assert 0.2 < acceptance < 0.9, "the test needs drafts that are accepted sometimes and rejected sometimes"
    assert all(free == total for free, total in engine.kv_usage().values())


def test_wrong_acceptance_rule_fails(engine, exact, monkeypatch):
    """Accepting every draft token (the test u * q <= p skipped) emits the draft's distribution: caught."""

    def accept_every_draft(**kwargs):
        kwargs["draft_topk_probs"] = kwargs["draft_topk_probs"] * 1e-9  # u * q <= p now always holds
        return rejection_sample(**kwargs)

    monkeypatch.setattr(engine_module.kernels, "rejection_sample", accept_every_draft)
    assert sample_pvalue(engine, exact) < 1e-6


def test_same_seed_same_output(bundled_engine):
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=1234)
    first = bundled_engine.generate(["def parse(line):"], params, policy="fixed:4")[0]
    # Other requests in the batch: the output depends only on the seed (and the models).
    again = bundled_engine.generate(["def parse(line):", "import json"], params, policy="fixed:4")[0]
    assert first.token_ids == again.token_ids
