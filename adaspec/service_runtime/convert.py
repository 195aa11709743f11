"""Between protobuf messages and the package's Python types (torch-free: the coordinator imports it)."""

from __future__ import annotations

from adaspec.sampling_params import SamplingParams
from adaspec.v1 import common_pb2


def params_from_proto(msg: common_pb2.SamplingParams, seed: int | None = None) -> SamplingParams:
    """Unset optional fields take SamplingParams' defaults. Raises ValueError naming the field."""
    defaults = SamplingParams()
    return SamplingParams(
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else defaults.max_tokens,
        temperature=msg.temperature if msg.HasField("temperature") else defaults.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p if msg.HasField("top_p") else defaults.top_p,
        seed=seed if seed is not None else (msg.seed if msg.HasField("seed") else None),
        stop=list(msg.stop),
        stop_token_ids=list(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )


def params_to_proto(params: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        max_tokens=params.max_tokens, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
        stop=params.stop, stop_token_ids=params.stop_token_ids, ignore_eos=params.ignore_eos,
    )
    if params.seed is not None:
        msg.seed = params.seed
    return msg
