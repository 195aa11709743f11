"""The engine's greedy fast path against the general rejection sampler it replaces for all-greedy batches."""

from __future__ import annotations

import itertools

import torch
from adaspec.kernels.rejection_sampler_ref import rejection_sample

from adaspec.engine.verification import greedy_verify


def test_greedy_verify_matches_the_rejection_sampler_on_ragged_batches():
    generator = torch.Generator().manual_seed(0)
    vocab, trials, accepted_counts = 50, 200, set()
    for _ in range(trials):
        num_draft = torch.randint(0, 6, (int(torch.randint(1, 6, (1,), generator=generator)),),
                                  generator=generator).tolist()
        logits = torch.randn(sum(num_draft) + len(num_draft), vocab, generator=generator)
        argmax = logits.argmax(dim=-1).tolist()
        drafts, row = [], 0
        for k in num_draft:  # drafts that follow the target's argmax for a random prefix, then stray
            agree = int(torch.randint(0, k + 1, (1,), generator=generator))
            drafts.append([argmax[row + j] if j < agree else (argmax[row + j] + 1) % vocab for j in range(k)])
            row += k + 1
        batch = len(drafts)
        flat = torch.tensor([t for d in drafts for t in d], dtype=torch.long)
        one_hot_ids = flat[:, None].expand(-1, 4).contiguous()
        one_hot = torch.zeros(len(flat), 4)
        one_hot[:, 0] = 1.0
        want_accepted, want_out = rejection_sample(
            logits, flat, one_hot_ids, one_hot, torch.tensor(list(itertools.accumulate(num_draft))),
            torch.zeros(batch), torch.zeros(batch, dtype=torch.long), torch.ones(batch),
            torch.ones(batch, dtype=torch.bool), torch.arange(batch), max(num_draft))
        num_accepted, emitted = greedy_verify(argmax, drafts)
        assert num_accepted == want_accepted.tolist()
        assert emitted == [out[: n + 1] for out, n in zip(want_out.tolist(), num_accepted)]
        accepted_counts.update(n / max(1, k) for n, k in zip(num_accepted, num_draft))
    assert 0.0 in accepted_counts and 1.0 in accepted_counts  # both full rejection and full acceptance were seen
