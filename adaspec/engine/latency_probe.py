"""Measuring forward latencies on this machine: the samples a latency profile is fitted to.

For each shape (b sequences, q new tokens each, c tokens of context) the probe fills b scratch sequences'
caches to c tokens (untimed), times forwards of q tokens per sequence (the first of them a warm-up), and
truncates the caches back after each. Target forwards return logits for every query token, as a
verification does; draft forwards one per sequence, as drafting does. Scratch sequences use ids no
request can have and leave the caches as they found them. `adaspec profile` runs the full grid; a
replica started without a profile runs the quick one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adaspec.engine.model_runner import ForwardItem, ModelRunner
from adaspec.speculation.latency_profile import LatencyProfile, Sample

PROBE_IDS = 1 << 40  # scratch sequence ids start here: far above any request id
MAX_PROBE_TOKENS = 4096  # tokens per prefill forward while filling the scratch caches


@dataclass(frozen=True)
class ProbeGrid:
    batches: tuple[int, ...]
    verify_tokens: tuple[int, ...]  # query tokens per sequence in a verify forward (k + 1)
    draft_tokens: tuple[int, ...]  # in a draft forward (1; more in the first, which catches up)
    contexts: tuple[int, ...]
    repeats: int

    def shapes(self, tokens: tuple[int, ...], max_model_len: int) -> list[tuple[int, int, int]]:
        return [(b, q, c) for c in self.contexts for b in self.batches for q in tokens if c + q < max_model_len]


FULL = ProbeGrid(batches=(1, 2, 4, 8, 16, 32, 64), verify_tokens=(1, 2, 3, 5, 7, 9), draft_tokens=(1, 2, 4),
                 contexts=(32, 128, 512, 1024), repeats=3)
QUICK = ProbeGrid(batches=(1, 8), verify_tokens=(1, 5), draft_tokens=(1, 2), contexts=(64, 256), repeats=2)


def measure_profile(target: ModelRunner, draft: ModelRunner | None, max_model_len: int, grid: ProbeGrid,
                    progress: Callable[[int], None], meta: dict) -> LatencyProfile:
    """A latency profile of both models from the grid's shapes (the caches must be idle enough to hold the scratch
    sequences; shapes that do not fit are skipped). `meta`: what the profile was measured on."""
    verify = probe(target, grid.shapes(grid.verify_tokens, max_model_len), grid.repeats, logits_per_token=True,
                   progress=progress)
    drafts = [] if draft is None else probe(draft, grid.shapes(grid.draft_tokens, max_model_len), grid.repeats,
                                            logits_per_token=False, progress=progress)
    return LatencyProfile.from_samples(verify, drafts, {**meta, "grid": "quick" if grid is QUICK else "full"})


def probe(runner: ModelRunner, shapes: list[tuple[int, int, int]], repeats: int, logits_per_token: bool,
          progress: Callable[[int], None] = lambda n: None) -> list[Sample]:
    """One sample per shape that fits the cache: the median of `repeats` timed forwards (`progress(1)` after each
    shape). Shapes are grouped by (b, c) so each group's caches are filled once."""
    blocks = runner.kv_cache.blocks
    vocab = runner.loaded.vocab_size
    samples = []
    groups: dict[tuple[int, int], list[int]] = {}
    for b, q, c in shapes:
        groups.setdefault((b, c), []).append(q)
    for (b, c), queries in groups.items():
        ids = list(range(PROBE_IDS, PROBE_IDS + b))
        if not blocks.can_reserve(b * (c + max(queries)) + b * blocks.block_size):
            progress(len(queries))
            continue  # this cache cannot hold the shape: no sample (the fit extrapolates)
        try:
            for seq_id in ids:
                blocks.reserve(seq_id, c + max(queries))
            _fill(runner, ids, c, vocab)
            for q in queries:
                times = []
                for _ in range(repeats + 1):
                    items = [ForwardItem(s, [(s * 31 + t) % vocab for t in range(q)], q if logits_per_token else 1)
                             for s in ids]
                    times.append(_timed_forward(runner, items))
                    for seq_id in ids:
                        blocks.resize(seq_id, c)
                samples.append(Sample.forward(b, b * q, c + q, sorted(times[1:])[len(times[1:]) // 2]))
                progress(1)
        finally:
            for seq_id in ids:
                blocks.free(seq_id)
    return samples


def _fill(runner: ModelRunner, ids: list[int], context: int, vocab: int) -> None:
    per_forward = max(1, MAX_PROBE_TOKENS // max(context, 1))
    for start in range(0, len(ids), per_forward):
        items = [ForwardItem(s, [(s * 17 + t) % vocab for t in range(context)], 1) for s in ids[start:start + per_forward]]
        runner.forward(items)


def _timed_forward(runner: ModelRunner, items: list[ForwardItem]) -> float:
    cuda = runner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(runner.device)
    start = time.perf_counter()
    runner.forward(items)
    if cuda:
        torch.cuda.synchronize(runner.device)
    return (time.perf_counter() - start) * 1e3
