"""Load a local Hugging Face causal-LM checkpoint (Llama family) to run under the paged attention."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from adaspec.engine.attention import ATTENTION_NAME
from adaspec.engine.paths import BUNDLED_DRAFT, BUNDLED_TARGET, MODELS_DIR  # noqa: F401 (re-exported)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
DEFAULT_CPU_KV_BYTES = 512 * 2**20


@dataclass
class LoadedModel:
    path: str
    model: torch.nn.Module
    tokenizer: object
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # rows of the output embedding (may exceed the tokenizer's size)
    max_model_len: int

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def default_kv_budget(device: torch.device) -> int:
    """KV cache bytes when none are given: 80 % of free memory on CUDA, DEFAULT_CPU_KV_BYTES on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    return DEFAULT_CPU_KV_BYTES


def load_model(path: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type '{config.model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION_NAME)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_model_len = config.max_position_embeddings
    # The paged attention has no sliding window: stay inside the window, where attention is full.
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        max_model_len = min(max_model_len, config.sliding_window)
    return LoadedModel(
        path=str(path),
        model=model,
        tokenizer=tokenizer,
        num_layers=config.num_hidden_layers,
        num_kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        max_model_len=max_model_len,
    )


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """Draft tokens are target tokens: the two tokenizers must map every string to the same id."""
    target_vocab, draft_vocab = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if target_vocab == draft_vocab:
        return
    only_target = sorted(set(target_vocab) - set(draft_vocab), key=target_vocab.get)
    only_draft = sorted(set(draft_vocab) - set(target_vocab), key=draft_vocab.get)
    moved = [t for t in target_vocab if t in draft_vocab and target_vocab[t] != draft_vocab[t]]
    details = [f"target has {len(target_vocab)} tokens, draft has {len(draft_vocab)}"]
    if only_target:
        details.append(f"{len(only_target)} only in the target (e.g. {only_target[:3]})")
    if only_draft:
        details.append(f"{len(only_draft)} only in the draft (e.g. {only_draft[:3]})")
    if moved:
        t = moved[0]
        details.append(f"{len(moved)} with different ids "
                       f"(e.g. {t!r}: target {target_vocab[t]}, draft {draft_vocab[t]})")
    raise ValueError(
        f"draft model {draft.path} and target model {target.path} do not share a vocabulary: " + "; ".join(details)
    )
