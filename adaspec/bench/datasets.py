"""Prompt text for `adaspec bench`, cut to each request's prompt length in tokens (`adaspec.workload.prompt_for`).

- `code`: held-out Python standard library source, the bundled models' domain (`adaspec.workload.prompt_texts`).
- `spec-bench`: the turns of Spec-Bench (MT-bench, translation, summarization, QA, math, RAG; Xia et al., 2024,
  Apache-2.0), read from the shared data folder and never copied into the project. A prompt is a run of
  consecutive turns from a seeded start, so a long prompt holds several questions rather than one repeated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adaspec.workload import prompt_for, prompt_texts
from adaspec.workload.trace import REPO_ROOT

DATASETS = ("code", "spec-bench")
CHARS_PER_TOKEN = 8  # room in a source text per prompt token; prompt_for repeats a source that is still short


def spec_bench_path() -> Path:
    """`$ADASPEC_DATA_DIR/prompts/spec_bench.jsonl` if that variable is set, else
    `<repo root>/../shared/data/prompts/spec_bench.jsonl`."""
    env = os.environ.get("ADASPEC_DATA_DIR")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return root / "prompts" / "spec_bench.jsonl"


def spec_bench_turns(path: Path) -> list[str]:
    """Every turn of every item, in file order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Spec-Bench prompts not found (set ADASPEC_DATA_DIR to the folder holding "
                                "prompts/spec_bench.jsonl)")
    turns = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                turns += [t for t in json.loads(line)["turns"] if t.strip()]
    if not turns:
        raise ValueError(f"{path}: no turns")
    return turns


def _spec_bench_sources(n: int, seed: int, max_chars: int) -> list[str]:
    turns = spec_bench_turns(spec_bench_path())
    rng = np.random.default_rng(seed)
    sources = []
    for _ in range(n):
        i = int(rng.integers(len(turns)))
        parts, size = [], 0
        while size < max_chars and len(parts) < len(turns):
            parts.append(turns[i])
            size += len(turns[i]) + 2
            i = (i + 1) % len(turns)
        sources.append("\n\n".join(parts))
    return sources


def dataset_prompts(dataset: str, token_counts: list[int], seed: int,
                    tokenize: Callable[[str], list[int]]) -> list[str]:
    """One prompt per count, about that many tokens long (never more), from `dataset`; same seed, same prompts."""
    max_chars = max(8000, CHARS_PER_TOKEN * max(token_counts, default=0))
    if dataset == "code":
        sources = prompt_texts(len(token_counts), seed=seed, max_chars=max_chars)
    elif dataset == "spec-bench":
        sources = _spec_bench_sources(len(token_counts), seed, max_chars)
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    return [prompt_for(count, source, tokenize) for count, source in zip(token_counts, sources, strict=True)]
