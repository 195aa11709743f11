"""Speculative sampling through the whole engine is distributed as the target alone.

Tiny random target and draft (different weights, so q differs from p), top_k = 3 so that four
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
from kernels.rejection_sampler_ref import rejection_sample
from kernels.sampling import processed_probs
from tests.conftest import write_random_checkpoint

PROMPT = [0, 17, 301, 45]
NUM_TOKENS, TOP_K, TEMPERATURE, SAMPLES = 4, 3, 1.3, 3000


@pytest.fixture(scope="module")
def sampling_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling-models")
    target = write_random_checkpoint(root / "target", "llama", 2, 64, 4, 2, seed=5, init_range=0.6)
    draft = write_random_checkpoint(root / "draft", "llama", 1, 32, 2, 1, seed=6, init_range=0.6)
    return target, draft


def exact_sequence_probs(target_dir) -> dict[tuple[int, ...], float]:
    """P(x1..x4 | prompt) under the processed target distribution, for every reachable sequence."""
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
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


def test_speculative_sampling_is_distributed_as_target(sampling_pair):
    target, draft = sampling_pair
    engine = Engine(str(target), str(draft), max_num_seqs=512, kv_cache_memory=64 * 2**20)
    exact = exact_sequence_probs(target)
    assert len(exact) > 40
    assert sample_pvalue(engine, exact) > 1e-4
    assert all(free == total for free, total in engine.kv_usage().values())


def test_wrong_acceptance_rule_fails(sampling_pair, monkeypatch):
    """Recovering from p instead of max(0, p - q) after a rejection is a classic bug: the test must catch it."""

    def recover_from_p(**kwargs):
        num_accepted, out = rejection_sample(**kwargs)
        # Re-draw the recovered token from p itself (ignore q) with the bonus-token machinery.
        counts = torch.diff(kwargs["cu_num_draft_tokens"], prepend=torch.zeros(1, dtype=torch.long))
        rejected = (num_accepted < counts).nonzero()[:, 0].tolist()
        if rejected:
            rows = [int(kwargs["cu_num_draft_tokens"][b] - counts[b] + b + num_accepted[b]) for b in rejected]
            no_draft = torch.zeros(0, dtype=torch.long)
            _, redrawn = rejection_sample(
                target_logits=kwargs["target_logits"][rows], draft_token_ids=no_draft,
                draft_topk_ids=kwargs["draft_topk_ids"][:0], draft_topk_probs=kwargs["draft_topk_probs"][:0],
                cu_num_draft_tokens=torch.zeros(len(rows), dtype=torch.long),
                **{k: kwargs[k][rejected] for k in ("temperature", "top_k", "top_p", "is_greedy", "seeds")},
                max_spec_len=0,
            )
            out[rejected, num_accepted[rejected]] = redrawn[:, 0]
        return num_accepted, out

    monkeypatch.setattr(engine_module.kernels, "rejection_sample", recover_from_p)
    target, draft = sampling_pair
    engine = Engine(str(target), str(draft), max_num_seqs=512, kv_cache_memory=64 * 2**20)
    assert sample_pvalue(engine, exact_sequence_probs(target)) < 1e-6


def test_same_seed_same_output(bundled_engine):
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=1234)
    first = bundled_engine.generate(["def parse(line):"], params, policy="fixed:4")[0]
    # Different batch company and policy: the output depends only on the seed (and the models).
    again = bundled_engine.generate(["def parse(line):", "import json"], params, policy="fixed:4")[0]
    assert first.token_ids == again.token_ids
