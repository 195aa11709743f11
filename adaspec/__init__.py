"""AdaSpec: load- and SLO-adaptive speculative decoding.

`SamplingParams` and `RequestOutput` are light; `Engine` (torch, transformers) is imported on first use,
so that the client SDK never pulls in torch.
"""

from adaspec.outputs import RequestOutput
from adaspec.sampling_params import SamplingParams

__all__ = ["Engine", "KVCacheExhausted", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Engine", "KVCacheExhausted"):
        from adaspec import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'adaspec' has no attribute {name!r}")
