"""CUDA graphs' padded batches (`adaspec.engine.cuda_graphs`), checked on the CPU: the graphs themselves need a
device (benchmarks/gpu_check.sh runs the engine with them there), but what they replay is the same forward over the
same padded inputs, which runs eagerly here (`capture=False`). A padded forward gives the logits and the cache
contents of the plain one, step after step, with sequences joining and leaving and drafts rolled back."""

from __future__ import annotations

import random

import pytest
import torch

from adaspec import Engine
from adaspec.engine.cuda_graphs import PackedBatch
from adaspec.engine.kv_cache import PagedKVCache
from adaspec.engine.model_loader import load_model
from adaspec.engine.model_runner import ForwardItem, ModelRunner

MAX_QUERY_LEN = 5  # a verify step of 4 drafts


def runner_pair(path) -> tuple[ModelRunner, ModelRunner]:
    """(plain, padded) runners of one model, each with a cache of its own."""
    runners = []
    for graphed in (False, True):
        loaded = load_model(path, torch.device("cpu"), torch.float32)
        cache = PagedKVCache(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, num_blocks=100, block_size=4,
                             dtype=torch.float32, device=torch.device("cpu"))
        runner = ModelRunner(loaded, cache)
        if graphed:
            runner.use_cuda_graphs(max_num_seqs=6, max_query_len=MAX_QUERY_LEN, max_model_len=96, capture=False)
        runners.append(runner)
    return runners[0], runners[1]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_forwards_match_plain_ones(random_pairs, family):
    plain, padded = runner_pair(random_pairs[family][0])
    rng = random.Random(0)
    lengths = {}  # seq id -> tokens in the cache
    bucketed = 0
    for step in range(14):
        if step % 4 == 0:  # a new sequence: its prefill is longer than any bucket, so it runs eagerly
            seq_id = len(lengths)
            for runner in (plain, padded):
                runner.kv_cache.blocks.reserve(seq_id, 96)
            lengths[seq_id] = 0
            items = [ForwardItem(seq_id, [rng.randrange(4096) for _ in range(rng.randint(7, 20))], 1)]
        else:  # decode or verify rows for a subset, each with its own number of new tokens
            chosen = rng.sample(sorted(lengths), rng.randint(1, len(lengths)))
            items = []
            for seq_id in chosen:
                tokens = rng.randint(1, MAX_QUERY_LEN)
                items.append(ForwardItem(seq_id, [rng.randrange(4096) for _ in range(tokens)],
                                         rng.choice([0, 1, tokens])))
            items[0].num_logits = max(items[0].num_logits, 1)
        bucketed += padded.graphed.bucket_for(len(items), max(len(i.token_ids) for i in items)) is not None
        torch.testing.assert_close(padded.forward(items), plain.forward(items), rtol=1e-5, atol=1e-5)
        for item in items:
            lengths[item.seq_id] += len(item.token_ids)
            if rng.random() < 0.4 and len(item.token_ids) > 1:  # drafts rejected: the cache rolls back
                lengths[item.seq_id] -= rng.randint(1, len(item.token_ids) - 1)
                for runner in (plain, padded):
                    runner.kv_cache.blocks.resize(item.seq_id, lengths[item.seq_id])
    assert bucketed >= 8  # most steps ran padded
    managed = plain.kv_cache.blocks.num_blocks  # the scratch block past them holds padding, nothing else
    for layer in range(len(plain.kv_cache.keys)):
        for seq_id, length in lengths.items():
            table = plain.kv_cache.blocks.block_table(seq_id)
            assert table == padded.kv_cache.blocks.block_table(seq_id)
            slots = torch.tensor([table[p // 4] * 4 + p % 4 for p in range(length)])
            for name in ("keys", "values"):
                ours = getattr(padded.kv_cache, name)[layer][:managed].flatten(0, 1)[slots]
                theirs = getattr(plain.kv_cache, name)[layer][:managed].flatten(0, 1)[slots]
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_padded_inputs_layout(random_pairs):
    _, padded = runner_pair(random_pairs["llama"][0])
    graphed = padded.graphed
    assert graphed.bucket_for(3, 2) == (4, 2) and graphed.bucket_for(1, 1) == (1, 1)
    assert graphed.bucket_for(8, 1) == (8, 1) and graphed.bucket_for(9, 1) is None and graphed.bucket_for(2, MAX_QUERY_LEN + 1) is None  # eager
    batch = PackedBatch(input_ids=[5, 6, 7], positions=[9, 3, 4], slots=[9, 19, 20], logit_index=[0, 2],
                        cu_query_lens=[0, 1, 3], seq_lens=[10, 5], block_tables=[[0, 1, 2], [4, 5]], max_query_len=2)
    flat = graphed.padded_inputs(batch, (2, 2)).tolist()
    width, scratch = graphed.table_width, padded.kv_cache.scratch_slot
    assert scratch == 100 * 4
    assert flat[:4] == [5, 6, 7, 0] and flat[4:8] == [9, 3, 4, 0]
    assert flat[8:12] == [9, 19, 20, scratch]  # the padding token writes the scratch block
    assert flat[12:16] == [0, 2, 0, 0]  # logit rows past the wanted ones read row 0
    assert flat[16:19] == [0, 1, 3] and flat[19:21] == [10, 5]
    assert flat[21:] == [0, 1, 2] + [0] * (width - 3) + [4, 5] + [0] * (width - 2)
    flat = graphed.padded_inputs(batch, (4, 2)).tolist()  # two padded sequences: no token, empty
    tokens = 8
    assert flat[4 * tokens : 4 * tokens + 5] == [0, 1, 3, 3, 3] and flat[4 * tokens + 5 : 4 * tokens + 9] == [10, 5, 0, 0]


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        Engine(device="cpu", cuda_graphs=True)


def test_the_cache_keeps_one_scratch_block_out_of_the_budget():
    shape = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 2, "block_size": 4, "dtype": torch.float32,
             "device": torch.device("cpu")}
    block_bytes = 4 * PagedKVCache.bytes_per_token(2, 2, 2, torch.float32)
    cache = PagedKVCache.from_budget(10 * block_bytes, **shape)
    assert cache.blocks.num_blocks == 9 and cache.keys[0].shape[0] == 10 and cache.scratch_slot == 9 * 4
    with pytest.raises(ValueError, match="smaller than two blocks"):
        PagedKVCache.from_budget(block_bytes, **shape)
