"""The reference rejection sampler: exact edge cases, and distribution tests against p.

The statistical tests draw many independent rows in one call (each row its own seed), so the
empirical distribution of emitted tokens can be compared with the exact target distribution.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from kernels import PLACEHOLDER_TOKEN_ID
from kernels.rejection_sampler_ref import rejection_sample
from kernels.sampling import processed_probs


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
    p = processed_probs(logits, torch.ones(len(logits)), torch.zeros(len(logits), dtype=torch.long), torch.ones(len(logits)))
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
