"""A replica's published load: the record replicas heartbeat, coordinators route on and the SDK returns.

Plain Python and protobuf only, so the SDK can import it without the load store's Redis client.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adaspec.v1 import common_pb2


@dataclass
class ReplicaLoad:
    """One replica's heartbeat: what a coordinator needs to pick a replica."""

    replica_id: str          # unique per process, e.g. "verify-0"
    kind: str                # "verify" | "draft"
    pool: str                # verify pool name ("default"); drafts use "draft"
    address: str             # host:port of its gRPC server
    sessions: int = 0        # open sessions
    waiting: int = 0         # sessions queued for admission
    # committed tokens (prompt, resumed or generated output) not yet in the replica's KV cache, which its engine
    # must run through the model before answering: mostly prompts waiting for prefill; on a draft replica also a
    # session's prompt until its first step and the tokens its queued steps commit. The same on both kinds, so
    # routing can compare it: the input work queued ahead of a new request.
    queued_tokens: int = 0
    free_kv_blocks: int = 0
    total_kv_blocks: int = 0
    max_sessions: int = 0    # capacity: admitted + queue limit
    step_latency_ms: float = 0.0   # recent (EWMA) engine step latency
    acceptance_rate: float = 0.0   # EWMA over verify steps with drafts of accepted / drafted
    tokens_per_step: float = 0.0   # tokens committed per session step (EWMA), verify replicas
    updated_at: float = 0.0  # time.time() of the heartbeat
    latency_coef: list[float] = field(default_factory=list)  # its latency model [w0..w4] (latency_profile)
    acceptance_counts: list[float] = field(default_factory=list)  # verify: calibration counts (acceptance)
    mean_context: float = 0.0  # mean context of its sequences (EWMA)
    step_tokens: float = 0.0   # verify: query tokens per session step, drafts + 1 (EWMA)
    step_batch: float = 0.0    # sessions per engine step (EWMA)
    model: str = ""            # the checkpoint it serves (its directory's name)

    def to_dict(self) -> dict[str, str]:
        """Every field as a string: the shape of a Redis hash (`repr` keeps floats exact, lists are JSON)."""
        values = dataclasses.asdict(self)
        return {k: repr(v) if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)
                for k, v in values.items()}

    def to_proto(self) -> common_pb2.ReplicaLoad:
        return common_pb2.ReplicaLoad(**dataclasses.asdict(self))

    @classmethod
    def from_proto(cls, msg: common_pb2.ReplicaLoad) -> ReplicaLoad:
        return cls(**{f.name: list(v) if not isinstance(v := getattr(msg, f.name), (int, float, str)) else v
                      for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls, data: Mapping[str | bytes, Any]) -> ReplicaLoad:
        """Inverse of `to_dict`; accepts str or bytes keys/values, ignores unknown keys.

        Unknown keys are ignored so that a newer replica publishing an extra field does not break an
        older coordinator during a rolling upgrade; missing optional fields take their defaults.
        """
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            conv = _CONVERTERS.get(name)
            if conv is None:
                continue
            text = value.decode() if isinstance(value, bytes) else value
            kwargs[name] = conv(text)
        return cls(**kwargs)


# field name -> converter from its string form, from the annotations (strings under `annotations`).
_CONVERTERS: dict[str, type] = {
    f.name: {"int": int, "float": float, "str": str, "list[float]": json.loads}[str(f.type)]
    for f in dataclasses.fields(ReplicaLoad)}
