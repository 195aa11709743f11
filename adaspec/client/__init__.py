"""The AdaSpec Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) for the coordinator's gRPC API.

Pure Python over grpcio and the generated `adaspec.v1` stubs; importing it does not import torch.
"""

from adaspec.client._async import AsyncClient
from adaspec.client._messages import Chunk, Completion, RequestStats, build_request
from adaspec.client._sync import Client
from adaspec.replica_load import ReplicaLoad

__all__ = ["AsyncClient", "Chunk", "Client", "Completion", "ReplicaLoad", "RequestStats", "build_request"]
