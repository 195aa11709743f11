"""Paged KV cache: rollback equals a fresh forward; the budget refuses what does not fit; no leaks."""

from __future__ import annotations

import pytest
import torch

from adaspec import Engine, KVCacheExhausted, SamplingParams
from adaspec.engine.kv_cache import BlockManager
from adaspec.engine.model_runner import ForwardItem
from tests.conftest import HELD_OUT_SNIPPETS


def test_block_manager_reserve_grow_truncate_free():
    blocks = BlockManager(num_blocks=8, block_size=4)
    blocks.reserve(1, 20)  # 5 blocks promised
    assert blocks.num_available_blocks == 3 and blocks.num_free_blocks == 8
    assert not blocks.can_reserve(13) and blocks.can_reserve(12)
    blocks.resize(1, 9)
    assert len(blocks.block_table(1)) == 3 and blocks.num_free_blocks == 5 and blocks.num_available_blocks == 3
    blocks.resize(1, 4)  # truncate gives blocks back
    assert len(blocks.block_table(1)) == 1 and blocks.num_free_blocks == 7
    with pytest.raises(KVCacheExhausted, match="reservation"):
        blocks.resize(1, 21)
    with pytest.raises(KVCacheExhausted, match="available"):
        blocks.reserve(2, 16)
    with pytest.raises(KVCacheExhausted, match="only 8 blocks"):
        blocks.reserve(3, 33)
    blocks.free(1)
    blocks.free(1)
    assert blocks.num_free_blocks == blocks.num_available_blocks == 8 and blocks.num_sequences == 0


def test_truncate_and_continue_equals_fresh_forward(bundled_engine):
    runner = bundled_engine.target_runner
    blocks = runner.kv_cache.blocks
    prompt = bundled_engine.tokenizer(HELD_OUT_SNIPPETS[2])["input_ids"]
    rejected, continuation = [11, 12, 13, 14, 15], [21, 22, 23]
    try:
        blocks.reserve(1001, 256)
        blocks.reserve(1002, 256)
        runner.forward([ForwardItem(1001, prompt + rejected, 1)])
        blocks.resize(1001, len(prompt))  # roll back the rejected tokens, across a block boundary
        rolled_back = runner.forward([ForwardItem(1001, continuation, len(continuation))])
        fresh = runner.forward([ForwardItem(1002, prompt + continuation, len(continuation))])
    finally:
        blocks.free(1001)
        blocks.free(1002)
    torch.testing.assert_close(rolled_back, fresh, rtol=1e-5, atol=1e-5)


def test_budget_refuses_what_never_fits():
    engine = Engine(kv_cache_memory=2 * 2**20, block_size=16)  # a few hundred tokens
    free_before = engine.kv_usage()
    capacity = engine.kv_usage()["target"][1] * 16
    with pytest.raises(KVCacheExhausted, match="kv_cache_memory"):
        engine.generate(["def f():"], SamplingParams(max_tokens=capacity + 1))
    assert engine.kv_usage() == free_before


def test_requests_wait_for_blocks_and_pool_is_whole_after(bundled_engine):
    """More work than the pool holds at once: requests queue, all finish, and every block returns."""
    engine = Engine(kv_cache_memory=3 * 2**20, block_size=16)
    total = engine.kv_usage()["target"][1]
    params = SamplingParams(max_tokens=(total * 16) // 3, temperature=0.0, ignore_eos=True)
    outs = engine.generate(HELD_OUT_SNIPPETS[:6], params, policy="fixed:3")
    assert all(len(o.token_ids) == params.max_tokens for o in outs)
    assert engine.kv_usage() == {"target": (total, total), "draft": (total, total)}


def test_pool_is_whole_after_abort_and_error(bundled_engine):
    engine = bundled_engine
    whole = engine.kv_usage()
    request_id = engine.add_request("def main():", SamplingParams(max_tokens=50), policy="fixed:4")
    for _ in range(3):
        engine.step()
    assert engine.kv_usage() != whole
    engine.abort(request_id)
    assert engine.pop_output(request_id).finish_reason == "abort"
    assert engine.kv_usage() == whole and not engine.has_unfinished()

    original = engine._verify

    def crash(*args, **kwargs):
        raise RuntimeError("injected failure")

    engine._verify = crash
    try:
        with pytest.raises(RuntimeError, match="injected"):
            engine.generate(HELD_OUT_SNIPPETS[:3], SamplingParams(max_tokens=20))
    finally:
        engine._verify = original
    assert engine.kv_usage() == whole and not engine.has_unfinished()
