"""Prompt text for the bundled models: Python source from the standard library files held out from training.

The bundled pair was trained on the standard library's `.py` files minus ~3 % held out by path hash.
`corpus_split` is that rule, here (torch-free) so that `scripts/train_models.py` and the demo share it
(`models/TRAINING.json` lists the held-out files of the trained pair, which the tests compare against).
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "encodings", "lib2to3", "idlelib"}
HELD_OUT_PERCENT = 3
_STARTS = ("def ", "class ", "@", "import ", "    def ", "    @")


def corpus_split() -> tuple[list[Path], list[Path]]:
    """The standard library's source files, split ~97/3 into (train, held out) by a hash of their path
    (bucket = sha256(relative path) % 100 < 3 is held out), so the split is the same on every machine
    with the same Python. Site-packages, tests, encodings, lib2to3 and idlelib are left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train, held_out = [], []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if EXCLUDED_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        bucket = int(hashlib.sha256(str(rel).encode()).hexdigest(), 16) % 100
        (held_out if bucket < HELD_OUT_PERCENT else train).append(path)
    return train, held_out


def held_out_files() -> list[Path]:
    """The stdlib files the bundled pair never trained on (`corpus_split`)."""
    return corpus_split()[1]


@functools.lru_cache(maxsize=1)
def _held_out_lines() -> tuple[tuple[str, ...], ...]:
    files = []
    for path in held_out_files():
        try:
            lines = tuple(path.read_text(encoding="utf-8").splitlines(keepends=True))
        except (UnicodeDecodeError, OSError):
            continue
        if lines:
            files.append(lines)
    if not files:
        raise RuntimeError("no held-out standard library source found (sysconfig stdlib path has no .py files)")
    return tuple(files)


def prompt_texts(n: int, seed: int = 0, max_chars: int = 8000) -> list[str]:
    """`n` snippets of held-out stdlib source, each about `max_chars` long (whole lines; ~3.6 characters per
    token of the bundled tokenizer). A snippet starts at a `def`, `class`, decorator or import line of a
    randomly chosen file and runs on into the next file when its file ends. Same seed,
    same snippets."""
    files = _held_out_lines()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = int(rng.integers(len(files)))
        starts = [i for i, line in enumerate(files[f])
                  if line.startswith(_STARTS) or (line.startswith("from ") and " import " in line)] or [0]
        i = starts[int(rng.integers(len(starts)))]
        parts, size = [], 0
        while size < max_chars:
            line = files[f][i]
            if size + len(line) > max_chars and parts:
                break
            parts.append(line)
            size += len(line)
            i += 1
            if i == len(files[f]):
                f, i = (f + 1) % len(files), 0
                if not parts[-1].endswith("\n"):
                    parts.append("\n")
        out.append("".join(parts))
    return out


def prompt_for(num_tokens: int, snippet_source: str, tokenize: Callable[[str], list[int]]) -> str:
    """A prefix of `snippet_source` whose tokenization has about `num_tokens` tokens, never more when the
    tokenizer is monotone in the prefix.

    Cut at the last line boundary that fits; when that falls short of 90 % of the target (a long line), the
    cut moves into the next line, by characters. The source is repeated if it is too short. Each call
    tokenizes O(log length) prefixes.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    text = snippet_source
    if not text.strip():
        raise ValueError("snippet_source is empty")
    while len(tokenize(text)) < num_tokens:
        text = text + ("" if text.endswith("\n") else "\n") + text
    count = functools.lru_cache(maxsize=None)(lambda end: len(tokenize(text[:end])))

    def largest(cands: list[int]) -> int:  # the largest candidate end whose prefix fits, or -1
        lo, hi = 0, len(cands) - 1
        best = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if count(cands[mid]) <= num_tokens:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    if not ends or ends[-1] != len(text):
        ends.append(len(text))
    k = largest(ends)
    end = ends[k] if k >= 0 else 0
    if end and count(end) >= 0.9 * num_tokens:
        return text[:end]
    nxt = ends[k + 1] if k + 1 < len(ends) else len(text)
    j = largest(list(range(end + 1, nxt + 1)))
    if j >= 0:
        end = end + 1 + j
    return text[:max(end, 1)]


def tokenizer_for(model_dir: str | Path | None) -> Callable[[str], list[int]]:
    """The tokenize function of a checkpoint directory's `tokenizer.json` (default: the bundled target), through
    the `tokenizers` library: sizing prompts must not load torch or a model."""
    from tokenizers import Tokenizer

    from adaspec.engine.paths import BUNDLED_TARGET

    path = Path(model_dir or BUNDLED_TARGET) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: sizing prompts to token counts needs the model's tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
