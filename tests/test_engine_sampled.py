"""Speculative sampling through the whole engine is distributed as the target alone, under every policy.

The bundled pair (the draft is distilled from the target: q is close to p but not equal), top_k = 3 so that four
generated tokens have at most 81 outcomes. The exact probability of each outcome is computed by
teacher-forcing the target (HF implementation); thousands of seeded requests are compared with it by a
chi-square test. The first token comes from the prompt's forward; tokens 2-4 come from speculative steps.

Every policy runs with a latency profile under which drafting pays at this batch size, so each one really
drafts; the data-dependent stop rules (a threshold on the cumulative calibrated acceptance, the reference
system's batch rule) also run with budgets that make them stop often. Two deliberately wrong rules show
the test catches what it guards against: accepting every draft, and dropping a draft for its own low
confidence (which would verify a draft no longer distributed as q).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adaspec.kernels.rejection_sampler_ref import rejection_sample
from adaspec.kernels.sampling import processed_probs
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

import adaspec.engine.drafter as drafter_module
import adaspec.engine.engine as engine_module
from adaspec import Engine, SamplingParams
from adaspec.engine.model_loader import BUNDLED_TARGET
from adaspec.speculation.acceptance import RAW
from adaspec.speculation.draft_budget import BatchGoodputRule, DraftBudget
from adaspec.speculation.latency_profile import LatencyModel, LatencyProfile
from adaspec.speculation.policies import Policy

PROMPT = [0, 452, 286, 1340, 8, 78]  # "def fib(n"
NUM_TOKENS, TOP_K, TEMPERATURE, SAMPLES = 4, 3, 1.5, 3000
POLICY_SAMPLES = 1200
# A machine where a target forward costs 100 ms whatever its size and a draft forward 1 ms: drafting pays
# at any batch, so every adaptive policy drafts here.
DRAFTING_PAYS = LatencyProfile(LatencyModel((100.0, 0.0, 0.001, 0.0, 0.0)), LatencyModel((1.0, 0.0, 0.001, 0.0, 0.0)))


class ExplicitBudget(Policy):
    """Every request gets `budget` at every step."""

    def __init__(self, budget: DraftBudget):
        self.budget, self.name = budget, f"explicit:{budget}"

    def budgets(self, requests, ctx):
        return [self.budget] * len(requests)


@pytest.fixture(scope="module")
def engine():
    engine = Engine(max_num_seqs=512, kv_cache_memory=64 * 2**20, profile=DRAFTING_PAYS)
    for model in (engine.planner.verify_latency, engine.planner.draft_latency):
        model.observe = lambda sample: None  # keep the profile: on this machine's real timings no policy drafts here
    return engine


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


def sample_pvalue(engine: Engine, exact: dict, policy="fixed:3", samples: int = SAMPLES,
                  drafted: list | None = None) -> float:
    """The chi-square p-value of `samples` seeded requests against the exact distribution; `drafted` gets each
    request's draft token count."""
    params = [SamplingParams(max_tokens=NUM_TOKENS, temperature=TEMPERATURE, top_k=TOP_K, seed=i, ignore_eos=True)
              for i in range(samples)]
    outs = engine.generate([PROMPT] * samples, params, policy=policy)
    if drafted is not None:
        drafted += [o.stats["draft_tokens"] for o in outs]
    counts = dict.fromkeys(exact, 0)
    for out in outs:
        counts[tuple(out.token_ids)] += 1  # KeyError = a token outside the target's top-k support
    keys = sorted(exact, key=exact.get)
    expected = np.array([exact[k] for k in keys]) * samples
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


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["threshold:0.5", "hf-heuristic", "batch-schedule", "ema", "goodput",
                                    "adaspec-paper", "adaspec"])
def test_every_policy_samples_as_the_target(engine, exact, policy):
    drafted = []
    assert sample_pvalue(engine, exact, policy, POLICY_SAMPLES, drafted) > 1e-4
    assert sum(drafted) >= POLICY_SAMPLES // 2, f"{policy} must draft for the test to mean anything"


STOP_OFTEN = {
    # drafts on while the product of acceptances (here the raw confidences) stays above a half
    "cumulative acceptance": DraftBudget(3, min_accept_prob=0.5, curve=RAW),
    # keeps a depth only while it raises the batch's goodput: with these costs, about half the time
    "batch rule": DraftBudget(3, batch_rule=BatchGoodputRule(base_ms=10.0, draft_ms=1.0, token_ms=0.01)),
}


@pytest.mark.parametrize("rule", list(STOP_OFTEN))
def test_data_dependent_stop_rules_sample_as_the_target(engine, exact, rule):
    drafted = []
    assert sample_pvalue(engine, exact, ExplicitBudget(STOP_OFTEN[rule]), drafted=drafted) > 1e-4
    assert 1.2 * SAMPLES < sum(drafted) < 2.8 * SAMPLES, "the rule must stop early often, and not always"


def test_dropping_a_draft_for_its_own_confidence_fails(engine, exact, monkeypatch):
    """A stop rule that also withholds the draft whose confidence fell short: its verified drafts are no longer
    distributed as q, and the output is biased: caught."""

    propose = drafter_module.Drafter.propose

    def propose_then_drop(self, seqs, budgets):
        drafts = propose(self, seqs, budgets)
        rows, keep = 0, []
        for i, confidences in enumerate(drafts.confidences):
            n = len(confidences)
            if n and confidences[-1] < 0.5:
                drafts.tokens[i].pop()
                drafts.confidences[i].pop()
                keep += list(range(rows, rows + n - 1))
            else:
                keep += list(range(rows, rows + n))
            rows += n
        drafts.topk_ids, drafts.topk_probs = drafts.topk_ids[keep], drafts.topk_probs[keep]
        return drafts

    monkeypatch.setattr(drafter_module.Drafter, "propose", propose_then_drop)
    assert sample_pvalue(engine, exact, ExplicitBudget(STOP_OFTEN["cumulative acceptance"])) < 1e-6


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
