"""The reference rejection sampler: exact edge cases, and distribution tests against p.

The statistical tests draw many independent rows in one call (each row its own seed), so the
empirical distribution of emitted tokens can be compared with the exact target distribution.
"""

from __future__ import annotations

import pytest
import torch
from adaspec.kernels import PLACEHOLDER_TOKEN_ID
from adaspec.kernels.rejection_sampler_ref import RACE_OFFSET, rejection_sample
from adaspec.kernels.rng import uniform
from adaspec.kernels.sampling import processed_probs
from scipy.stats import chisquare


def call(target_logits, drafts, topk_ids, topk_probs, counts, greedy, temperature=1.0, top_k=0, top_p=1.0, seeds=None):
    batch = len(counts)
    return rejection_sample(
        target_logits=target_logits,
        draft_token_ids=torch.tensor(drafts, dtype=torch.long),
        draft_topk_ids=topk_ids,
        draft_topk_probs=topk_probs,
        cu_num_draft_tokens=torch.tensor(counts).cumsum(0),
        temperature=torch.full((batch,), float(temperature)),
        top_k=torch.full((batch,), top_k),
        top_p=torch.full((batch,), float(top_p)),
        is_greedy=torch.tensor(greedy),
        seeds=seeds if seeds is not None else torch.arange(batch),
        max_spec_len=max(counts),
    )


def one_hot_q(tokens, k=4):
    ids = torch.tensor(tokens)[:, None].repeat(1, k)
    probs = torch.zeros(len(tokens), k)
    probs[:, 0] = 1.0
    return ids, probs


def test_greedy_edge_cases():
    vocab = 10
    logits = torch.full((9, vocab), -5.0)
    argmax = [3, 4, 5, 6, 7, 1, 2, 8, 9]
    logits[torch.arange(9), torch.tensor(argmax)] = 5.0
    # rows: req0 k=3 all accepted (+bonus), req1 k=0 (bonus only), req2 k=3 first rejected
    drafts = [3, 4, 5] + [0, 2, 8]
    ids, probs = one_hot_q(drafts)
    num_accepted, out = call(logits, drafts, ids, probs, [3, 0, 3], [True, True, True])
    assert num_accepted.tolist() == [3, 0, 0]
    assert out[0].tolist() == [3, 4, 5, 6]
    assert out[1].tolist() == [7] + [PLACEHOLDER_TOKEN_ID] * 3
    assert out[2].tolist() == [1] + [PLACEHOLDER_TOKEN_ID] * 3


def test_sampled_draft_equal_to_target_is_always_accepted():
    """q == p: min(1, p/q) = 1 for every token, so every draft is accepted and the bonus comes from p."""
    torch.manual_seed(0)
    vocab, k, batch = 50, 4, 64
    logits = torch.randn(batch * (k + 1), vocab)
    n = len(logits)
    p = processed_probs(logits, torch.ones(n), torch.zeros(n, dtype=torch.long), torch.ones(n))
    rows = torch.arange(batch * (k + 1)).view(batch, k + 1)[:, :k].flatten()
    topk_probs, topk_ids = p[rows].topk(vocab)  # K = vocab: the sparse q is exact
    drafts = torch.multinomial(p[rows], 1)[:, 0].tolist()
    num_accepted, out = call(logits, drafts, topk_ids, topk_probs, [k] * batch, [False] * batch)
    assert num_accepted.tolist() == [k] * batch
    assert (out[:, k] != PLACEHOLDER_TOKEN_ID).all()


def test_top_k_one_is_greedy_and_near_zero_temperature():
    torch.manual_seed(1)
    vocab, batch = 30, 16
    logits = torch.randn(2 * batch, vocab)
    target_argmax = logits.argmax(-1).view(batch, 2)
    drafts = target_argmax[:, 0].tolist()
    ids, probs = one_hot_q(drafts)
    for kwargs in ({"top_k": 1}, {"temperature": 1e-4}):
        num_accepted, out = call(logits, drafts, ids, probs, [1] * batch, [False] * batch, **kwargs)
        assert num_accepted.tolist() == [1] * batch
        assert out[:, 1].tolist() == target_argmax[:, 1].tolist()


def distribution_rows(rows: int, vocab: int, seed: int):
    """One target row (p) and one draft distribution (q), repeated; each row drafts one token x ~ q."""
    generator = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(vocab, generator=generator) * 1.5
    q_logits = p_logits + torch.randn(vocab, generator=generator) * 1.5  # a draft that differs from p
    q = q_logits.softmax(-1)
    drafts = torch.multinomial(q, rows, replacement=True, generator=generator)
    target_logits = torch.stack([p_logits, p_logits]).repeat(rows, 1)  # [2 * rows, vocab]: draft row, bonus row
    topk_probs, topk_ids = q[None].expand(rows, vocab).topk(vocab)
    return p_logits.softmax(-1), q, target_logits, drafts, topk_ids, topk_probs


def first_token_pvalue(p: torch.Tensor, first_tokens: torch.Tensor) -> float:
    observed = torch.bincount(first_tokens, minlength=len(p)).double()
    expected = p.double() * len(first_tokens)
    return chisquare(observed.numpy(), expected.numpy() / expected.sum().item() * observed.sum().item()).pvalue


@pytest.mark.parametrize("seed", [0, 1])
def test_emitted_token_is_distributed_as_p(seed):
    rows, vocab = 60_000, 12
    p, q, target_logits, drafts, topk_ids, topk_probs = distribution_rows(rows, vocab, seed)
    assert (p - q).abs().sum() > 0.3, "the test needs a draft that differs from the target"
    _, out = call(target_logits, drafts.tolist(), topk_ids, topk_probs, [1] * rows, [False] * rows,
                  seeds=torch.arange(rows) + seed * rows)
    assert first_token_pvalue(p, out[:, 0]) > 1e-4
    # The second token is the bonus (after acceptance) or nothing: bonus tokens are distributed as p too.
    bonus = out[:, 1][out[:, 1] != PLACEHOLDER_TOKEN_ID]
    assert first_token_pvalue(p, bonus) > 1e-4


def test_wrong_acceptance_rule_fails_the_distribution_test():
    """Accepting every draft token (here: by telling the sampler q(x) = 0+) emits q, not p, and is caught."""
    rows, vocab = 60_000, 12
    p, _, target_logits, drafts, topk_ids, topk_probs = distribution_rows(rows, vocab, seed=0)
    _, out = call(target_logits, drafts.tolist(), topk_ids, topk_probs * 1e-9, [1] * rows, [False] * rows)
    assert first_token_pvalue(p, out[:, 0]) < 1e-6


def test_row_without_top_p_does_not_depend_on_its_batch_neighbours():
    """A top_p = 1 row keeps its whole fp32 tail even when a neighbour's top_p < 1 makes the batch sort
    (the cumulative mass reaches 1.0 in fp32 before the tail of this row ends)."""
    logits = torch.linspace(0.0, -40.0, 1000)[None].repeat(2, 1)  # [2, vocab]: tail probs ~1e-18
    logits[1] = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    ones, no_top_k = torch.ones(2), torch.zeros(2, dtype=torch.long)
    alone = processed_probs(logits, ones, no_top_k, torch.tensor([1.0, 1.0]))[0]
    assert (alone > 0).all()
    for neighbour_top_p in (0.9, 0.5):
        for top_k in (0, 7):  # with top-k too: the top-k-only fast path and the sorting path agree
            row = processed_probs(logits, ones, torch.tensor([top_k, 0]), torch.tensor([1.0, neighbour_top_p]))[0]
            expected = alone if top_k == 0 else processed_probs(logits, ones, torch.tensor([top_k, 0]), ones)[0]
            assert torch.equal(row, expected)


# Scaled logits with a three-way tie at the 3rd largest value (ids 0, 2, 5, around the others).
TIED_LOGITS = [2.0, 5.0, 2.0, -1.0, 3.0, 2.0, 0.0]


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [
        (3, 1.0, [0, 1, 2, 4, 5]),  # every token tied with the k-th logit is kept: 5 tokens for k = 3
        (1, 1.0, [1]),
        (3, 0.8, [1, 4]),  # mass above 3.0 is 0.778 < 0.8 (ties counted in Z); above 2.0 it is 0.884
        (3, 0.95, [0, 1, 2, 4, 5]),  # the top-p cut lands on the tie: all three stay
        (0, 0.0, [1]),  # top_p <= 0 keeps the most likely token
    ],
)
def test_ties_at_the_kth_logit_are_all_kept(top_k, top_p, kept):
    logits = torch.tensor([TIED_LOGITS] * 2)
    for neighbour_top_p in (1.0, 0.5):  # the top-k-only fast path and the sorting path
        probs = processed_probs(logits, torch.ones(2), torch.tensor([top_k, 0]), torch.tensor([top_p, neighbour_top_p]))
        assert torch.nonzero(probs[0]).flatten().tolist() == kept
        expected = torch.full((len(TIED_LOGITS),), float("-inf"))
        expected[kept] = torch.tensor(TIED_LOGITS)[kept]
        torch.testing.assert_close(probs[0], expected.softmax(-1), rtol=1e-6, atol=0)


def zero_residual_case(vocab: int, support: list[int], batch: int):
    """Every request drafts support[0] (k = 1) with q = 1.25 p on p's support, so max(0, p - q) = 0
    everywhere: an exaggerated stand-in for the fp32 rounding that can make q >= p everywhere when
    p ~ q. Seeds are chosen so that every draft is rejected (u * q(x) > p(x) needs u > 0.8; the seeds give
    u > 0.81). Token 0 is outside the support."""
    assert 0 not in support
    target_logits = torch.full((2 * batch, vocab), float("-inf"))
    target_logits[:, support] = torch.linspace(1.0, -1.0, len(support))
    p = processed_probs(target_logits[:1], torch.ones(1), torch.zeros(1, dtype=torch.long), torch.ones(1))[0]
    candidates = torch.arange(10_000)
    seeds = candidates[uniform(candidates, torch.zeros_like(candidates)) > 0.81][:batch]
    inputs = {
        "target_logits": target_logits, "draft_token_ids": torch.full((batch,), support[0]),
        "draft_topk_ids": torch.tensor([support] * batch), "draft_topk_probs": (1.25 * p[support]).repeat(batch, 1),
        "cu_num_draft_tokens": torch.arange(1, batch + 1), "temperature": torch.ones(batch),
        "top_k": torch.zeros(batch, dtype=torch.long), "top_p": torch.ones(batch),
        "is_greedy": torch.zeros(batch, dtype=torch.bool), "seeds": seeds, "max_spec_len": 1,
    }
    exponential = -torch.log(uniform(seeds[:, None], torch.arange(vocab)[None, :] + RACE_OFFSET))  # [batch, vocab]
    return inputs, (p[None, :] / exponential).argmax(dim=-1)  # the race on p, with the sampler's E_v


def test_recovered_token_falls_back_to_p_when_rounding_leaves_no_residual():
    inputs, expected = zero_residual_case(vocab=50, support=[7, 3, 42, 19], batch=16)
    num_accepted, out = rejection_sample(**inputs)
    assert num_accepted.tolist() == [0] * 16
    assert out[:, 0].tolist() == expected.tolist()  # not token 0, which has p = 0
    assert set(out[:, 0].tolist()) <= {7, 3, 42, 19} and len(set(out[:, 0].tolist())) > 1
