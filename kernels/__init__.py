"""Batched verification kernels. Each has a pure-PyTorch reference with the same signature.

`rejection_sample` dispatches: CUDA tensors use the Triton kernel when it is available, CPU tensors
the PyTorch reference; ADASPEC_FORCE_TRITON=1 forces the Triton path (with TRITON_INTERPRET=1 it runs
on the CPU, for tests).
"""

from kernels.paged_attention_ref import paged_attention
from kernels.rejection_sampler_ref import PLACEHOLDER_TOKEN_ID, rejection_sample

__all__ = ["PLACEHOLDER_TOKEN_ID", "paged_attention", "rejection_sample"]
