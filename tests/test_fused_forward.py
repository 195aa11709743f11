"""The engine's fused Llama-family forward against transformers' own forward on the same model and batch.

Both paths run through `ModelRunner` on one loaded model (the fused weights are the modules' own storage):
a ragged batch of prompt chunks, decode tokens and multi-token verify rows, several forwards deep, must
give the same logits and write the same keys and values into the paged cache."""

from __future__ import annotations

import pytest
import torch

from adaspec.engine.fused_forward import FusedForward
from adaspec.engine.kv_cache import PagedKVCache
from adaspec.engine.model_loader import BUNDLED_TARGET, load_model
from adaspec.engine.model_runner import ForwardItem, ModelRunner
from tests.conftest import write_random_checkpoint

# forward by forward: (seq_id, new tokens, logits wanted); prompts of mixed lengths, then decode and verify rows
SCHEDULE = [
    [(0, 37, 1), (1, 5, 1), (2, 16, 0)],
    [(0, 1, 1), (1, 5, 5), (2, 9, 1)],
    [(0, 4, 4), (1, 1, 1), (2, 3, 3), (3, 1, 1)],
    [(0, 1, 1)],
]


def run_schedule(runner: ModelRunner) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    vocab = runner.loaded.vocab_size
    logits = []
    for forward in SCHEDULE:
        items = []
        for seq_id, n, wanted in forward:
            if seq_id not in runner.kv_cache.blocks:
                runner.kv_cache.blocks.reserve(seq_id, 128)
            items.append(ForwardItem(seq_id, torch.randint(1, vocab, (n,), generator=generator).tolist(), wanted))
        logits.append(runner.forward(items))
    return logits


def runners(path) -> tuple[ModelRunner, ModelRunner]:
    loaded = load_model(path, torch.device("cpu"), torch.float32)
    assert FusedForward.supports(loaded.model)

    def cache():
        return PagedKVCache(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, 64, 16, torch.float32,
                            torch.device("cpu"))

    return ModelRunner(loaded, cache(), fused=False), ModelRunner(loaded, cache(), fused=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("fused")
    paths = {"bundled": BUNDLED_TARGET}
    for i, family in enumerate(("llama", "qwen2", "mistral")):
        paths[family] = write_random_checkpoint(root / family, family, 2, 64, 4, 2, seed=30 + i)
    return paths


@pytest.mark.parametrize("name", ["bundled", "llama", "qwen2", "mistral"])
def test_the_fused_forward_gives_transformers_logits_and_cache(checkpoints, name):
    general, fused = runners(checkpoints[name])
    assert general.fused is None and fused.fused is not None
    for want, got in zip(run_schedule(general), run_schedule(fused)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for layer in range(general.loaded.num_layers):
        torch.testing.assert_close(fused.kv_cache.keys[layer], general.kv_cache.keys[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.kv_cache.values[layer], general.kv_cache.values[layer], rtol=1e-5, atol=1e-5)


def test_the_fused_weights_are_the_modules_own_storage(checkpoints):
    loaded = load_model(checkpoints["qwen2"], torch.device("cpu"), torch.float32)  # qwen2: q/k/v carry biases
    before = sum(p.numel() for p in loaded.model.parameters())
    fused = FusedForward(loaded.model)
    attn = loaded.model.model.layers[0].self_attn
    assert attn.k_proj.weight.data_ptr() == fused.layers[0].qkv_weight[attn.q_proj.weight.shape[0]:].data_ptr()
    assert attn.v_proj.bias.data_ptr() == fused.layers[0].qkv_bias[-attn.v_proj.bias.shape[0]:].data_ptr()
    assert sum(p.numel() for p in loaded.model.parameters()) == before


def test_models_the_fused_forward_does_not_cover_keep_transformers_forward(checkpoints):
    loaded = load_model(checkpoints["llama"], torch.device("cpu"), torch.float32)
    loaded.model.config.mlp_bias = True  # a configuration the fused forward does not implement
    runner = ModelRunner(loaded, PagedKVCache(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, 8, 16,
                                              torch.float32, torch.device("cpu")))
    assert runner.fused is None
