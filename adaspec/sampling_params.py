"""Per-request sampling settings. Pure Python: the SDK imports this without torch."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

MAX_SEED = 2**63 - 1


@dataclass
class SamplingParams:
    """How one request samples. `temperature == 0` is greedy; `top_k == 0` and `top_p == 1` disable them.

    Every field is checked on construction; a bad value raises `ValueError` naming the field.
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:  # quotes at most 80 characters of the value: errors travel
            raise ValueError(f"SamplingParams.{name} {why}, got {reprlib.repr(getattr(self, name))}")

        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop, self.stop_token_ids = list(self.stop), list(self.stop_token_ids)
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            fail("max_tokens", "must be an integer >= 1")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            fail("temperature", "must be a finite number >= 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            fail("top_k", "must be an integer >= 0 (0 disables it)")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            fail("top_p", "must be a number in (0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            fail("seed", f"must be an integer in [0, {MAX_SEED}] or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            fail("stop", "must be a list of non-empty strings")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            fail("stop_token_ids", "must be a list of token ids >= 0")
        if not isinstance(self.ignore_eos, bool):
            fail("ignore_eos", "must be a bool")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
