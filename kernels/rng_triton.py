"""`adaspec.kernels.rng.uniform` in Triton: the same (seed, counter) -> uniform bits as the PyTorch reference.

The PyTorch version emulates wrapping 32-bit multiplies in int64; here the arithmetic is native
tl.uint32, whose multiply and add wrap modulo 2**32 by definition, so both produce identical floats.
"""

from __future__ import annotations

import triton
import triton.language as tl
from adaspec.kernels import rng

GOLDEN32 = tl.constexpr(rng.GOLDEN32)
MIX_MUL_1 = tl.constexpr(rng.MIX_MUL_1)
MIX_MUL_2 = tl.constexpr(rng.MIX_MUL_2)
INV_2_23 = tl.constexpr(rng.INV_2_23)


@triton.jit
def mix32(x):
    """lowbias32 on tl.uint32 values (any shape)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), MIX_MUL_1, tl.uint32)  # explicit uint32 constants: the multiply must wrap
    x = x ^ (x >> 15)
    x = x * tl.full((), MIX_MUL_2, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def seed_key(seed):
    """The per-seed half of the hash (scalar int64 seed in [0, 2**63)); hoisted out of vocabulary loops."""
    seed = seed.to(tl.int64)
    low = seed.to(tl.uint32)  # truncation keeps the low 32 bits
    high = (seed >> 32).to(tl.uint32)
    return mix32(low ^ mix32(high + tl.full((), GOLDEN32, tl.uint32)))


@triton.jit
def uniform_from_key(key, counter):
    """Uniform floats in (0, 1): key from `seed_key`, counter any int tensor with values in [0, 2**32)."""
    bits = mix32(key ^ mix32(counter.to(tl.uint32)))
    return ((bits >> 9).to(tl.float32) + 0.5) * INV_2_23
