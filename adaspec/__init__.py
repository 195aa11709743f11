"""AdaSpec: load- and SLO-adaptive speculative decoding.

`SamplingParams` and `RequestOutput` are light; `Engine` (torch, transformers) is imported on first use,
so that the client SDK never pulls in torch. The SDK (`Client`, `AsyncClient`, grpcio) and the typed errors
(`AdaSpecError` and its subclasses, `adaspec.errors`) are imported on first use too.
"""

from adaspec.outputs import RequestOutput
from adaspec.sampling_params import SamplingParams

__all__ = ["AdaSpecError", "AsyncClient", "Chunk", "Client", "Completion", "Engine", "KVCacheExhausted",
           "ReplicaLoad", "RequestOutput", "RequestStats", "SamplingParams"]
__version__ = "0.1.0"

_CLIENT_EXPORTS = ("AsyncClient", "Chunk", "Client", "Completion", "ReplicaLoad", "RequestStats")


def __getattr__(name: str):
    if name in ("Engine", "KVCacheExhausted"):
        from adaspec import engine

        return getattr(engine, name)
    if name in _CLIENT_EXPORTS:
        from adaspec import client

        return getattr(client, name)
    if name == "AdaSpecError":
        from adaspec.errors import AdaSpecError

        return AdaSpecError
    raise AttributeError(f"module 'adaspec' has no attribute {name!r}")
