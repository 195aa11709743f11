"""Shared fixtures: the bundled pair, tiny random Llama-family checkpoints, and the HF reference."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from adaspec.engine.model_loader import BUNDLED_DRAFT, BUNDLED_TARGET
from adaspec.loadstore import InProcessLoadStore

torch.set_num_threads(2)

# The Triton kernel tests need the interpreter chosen before triton is first imported, which this module does
# (transformers imports it): a plain run collects them only in the subprocess that test_kernels_interpreter.py
# starts, rather than here as well, skipped. Under TRITON_INTERPRET=1 this process runs them itself.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
collect_ignore = ["test_kernels_interpreter.py" if INTERPRETING else "test_kernels_triton.py"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """The interpreter run of the kernel tests starts in the background as soon as it is known to be wanted."""
    for item in session.items:
        if item.name == "test_kernels_in_interpreter_subprocess":
            item.module.start_interpreter_run(session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for item in getattr(session, "items", []):
        if item.name == "test_kernels_in_interpreter_subprocess":
            item.module.stop_interpreter_run(session.config)


HELD_OUT_SNIPPETS = [
    "def fib(n):",
    "import os\nimport sys\n\n\ndef main(argv):\n    parser = ",
    "class Queue:\n    \"\"\"A first-in first-out queue.\"\"\"\n\n    def __init__(self, maxsize=0):\n        self.maxsize = maxsize\n",
    "for i in range(10):\n    if i % 2:",
    "    try:\n        result = func(*args, **kwargs)\n    except Exception as exc:\n        ",
    "# Copyright 2001 Python Software Foundation\n\"\"\"Utilities for reading and writing configuration files.",
    "x = {'a': 1, 'b': [1, 2, 3]}\nprint(",
    "    def __repr__(self):\n        return '%s(%r)' % (self.__class__.__name__, ",
]


def write_random_checkpoint(path: Path, model_type: str, layers: int, hidden: int, heads: int, kv_heads: int,
                            seed: int, vocab_size: int = 4096, init_range: float = 0.1) -> Path:
    """A randomly initialised checkpoint of `model_type` that uses the bundled tokenizer."""
    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, initializer_range=init_range, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUNDLED_TARGET / name, path / name)
    return path


@pytest.fixture(scope="session")
def random_pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(target, draft) random checkpoints per model family; GQA in the targets."""
    root = tmp_path_factory.mktemp("random-models")
    pairs = {}
    for i, family in enumerate(("llama", "qwen2", "mistral")):
        target = write_random_checkpoint(root / f"{family}-target", family, 3, 64, 4, 2, seed=10 + i)
        draft = write_random_checkpoint(root / f"{family}-draft", family, 1, 32, 2, 1, seed=20 + i)
        pairs[family] = (target, draft)
    return pairs


@pytest.fixture(scope="session")
def bundled_engine():
    from adaspec import Engine

    return Engine()


@pytest.fixture(scope="session")
def bundled_reference():
    return AutoModelForCausalLM.from_pretrained(BUNDLED_TARGET, dtype=torch.float32).eval()


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers `generate` on the target alone, greedy (BOS is PAD here: pass the mask)."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


class SentOverANetwork(InProcessLoadStore):
    """An in-process store whose counts and reserves reach it `delay_s` after they are sent, as over a network: the
    requests of a burst all read a count before any of them reserves, and a release sent after a reserve may land
    first."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s

    async def reservations(self, replica_id):
        await asyncio.sleep(self.delay_s)
        return await super().reservations(replica_id)

    async def reserve(self, replica_id, lease_id, limit, lease_s):
        await asyncio.sleep(self.delay_s)
        return await super().reserve(replica_id, lease_id, limit, lease_s)


__all__ = ["BUNDLED_DRAFT", "BUNDLED_TARGET", "HELD_OUT_SNIPPETS", "SentOverANetwork", "hf_greedy",
           "write_random_checkpoint"]
