"""Counter-based random numbers: uniform(seed, counter), the same bits in PyTorch and in Triton.

Sampling decisions draw their randomness from a hash of (per-request seed, counter) instead of a
stateful generator, so that (1) a request's output does not depend on what else shares its batch,
(2) the Triton kernels and their PyTorch references see identical random numbers and can be
compared exactly, and (3) no full-vocabulary noise tensor has to be materialised on the GPU.

The mixer is the `lowbias32` integer hash (Wellons). PyTorch has no wrapping uint32 multiply, so
the reference does 32-bit arithmetic in int64 with 16-bit partial products; Triton uses uint32.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
INV_2_23 = 1.0 / (1 << 23)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), without int64 overflow."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL_2)
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Uniform floats in the open interval (0, 1), one per broadcast (seed, counter) pair.

    seeds: int64, values in [0, 2**63); counters: int64, values in [0, 2**32).
    """
    seeds, counters = seeds.long(), counters.long()
    key = mix32((seeds & MASK32) ^ mix32(((seeds >> 32) + GOLDEN32) & MASK32))
    bits = mix32(key ^ mix32(counters & MASK32))
    return ((bits >> 9).float() + 0.5) * INV_2_23


def splitmix64(*values: int) -> int:
    """Fold Python ints into one 63-bit seed (SplitMix64 finaliser over each value in turn)."""
    state = 0
    for value in values:
        state = (state + 0x9E3779B97F4A7C15 + (value & (2**64 - 1))) & (2**64 - 1)
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        state = z ^ (z >> 31)
    return state >> 1
