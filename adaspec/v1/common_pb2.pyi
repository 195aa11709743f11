from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_token_ids", "ignore_eos")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class DraftTokens(_message.Message):
    __slots__ = ("token_ids", "sparse_k", "topk_ids", "topk_probs", "confidences")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_K_FIELD_NUMBER: _ClassVar[int]
    TOPK_IDS_FIELD_NUMBER: _ClassVar[int]
    TOPK_PROBS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCES_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sparse_k: int
    topk_ids: _containers.RepeatedScalarFieldContainer[int]
    topk_probs: _containers.RepeatedScalarFieldContainer[float]
    confidences: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., sparse_k: _Optional[int] = ..., topk_ids: _Optional[_Iterable[int]] = ..., topk_probs: _Optional[_Iterable[float]] = ..., confidences: _Optional[_Iterable[float]] = ...) -> None: ...

class ReplicaLoad(_message.Message):
    __slots__ = ("replica_id", "kind", "pool", "address", "sessions", "waiting", "queued_tokens", "free_kv_blocks", "total_kv_blocks", "max_sessions", "step_latency_ms", "acceptance_rate", "tokens_per_step", "updated_at", "latency_coef", "acceptance_counts", "mean_context", "step_tokens", "step_batch", "model")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COEF_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEP_BATCH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    kind: str
    pool: str
    address: str
    sessions: int
    waiting: int
    queued_tokens: int
    free_kv_blocks: int
    total_kv_blocks: int
    max_sessions: int
    step_latency_ms: float
    acceptance_rate: float
    tokens_per_step: float
    updated_at: float
    latency_coef: _containers.RepeatedScalarFieldContainer[float]
    acceptance_counts: _containers.RepeatedScalarFieldContainer[float]
    mean_context: float
    step_tokens: float
    step_batch: float
    model: str
    def __init__(self, replica_id: _Optional[str] = ..., kind: _Optional[str] = ..., pool: _Optional[str] = ..., address: _Optional[str] = ..., sessions: _Optional[int] = ..., waiting: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., free_kv_blocks: _Optional[int] = ..., total_kv_blocks: _Optional[int] = ..., max_sessions: _Optional[int] = ..., step_latency_ms: _Optional[float] = ..., acceptance_rate: _Optional[float] = ..., tokens_per_step: _Optional[float] = ..., updated_at: _Optional[float] = ..., latency_coef: _Optional[_Iterable[float]] = ..., acceptance_counts: _Optional[_Iterable[float]] = ..., mean_context: _Optional[float] = ..., step_tokens: _Optional[float] = ..., step_batch: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class BatchGoodputRule(_message.Message):
    __slots__ = ("base_ms", "draft_ms", "token_ms", "hop_ms")
    BASE_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    HOP_MS_FIELD_NUMBER: _ClassVar[int]
    base_ms: float
    draft_ms: float
    token_ms: float
    hop_ms: float
    def __init__(self, base_ms: _Optional[float] = ..., draft_ms: _Optional[float] = ..., token_ms: _Optional[float] = ..., hop_ms: _Optional[float] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LinkFrame(_message.Message):
    __slots__ = ("session", "message", "end", "cancel", "status", "timeout_s")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session: int
    message: bytes
    end: bool
    cancel: bool
    status: bytes
    timeout_s: float
    def __init__(self, session: _Optional[int] = ..., message: _Optional[bytes] = ..., end: _Optional[bool] = ..., cancel: _Optional[bool] = ..., status: _Optional[bytes] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class LinkFrames(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[LinkFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[LinkFrame, _Mapping]]] = ...) -> None: ...
