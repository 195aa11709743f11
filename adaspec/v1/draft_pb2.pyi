from adaspec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DraftOpen(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "params", "seed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    params: _common_pb2.SamplingParams
    seed: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class DraftStep(_message.Message):
    __slots__ = ("num_accepted", "token_ids", "max_draft_tokens", "min_confidence", "min_accept_prob", "acceptance_curve", "batch_rule")
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_ACCEPT_PROB_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_CURVE_FIELD_NUMBER: _ClassVar[int]
    BATCH_RULE_FIELD_NUMBER: _ClassVar[int]
    num_accepted: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_draft_tokens: int
    min_confidence: float
    min_accept_prob: float
    acceptance_curve: _containers.RepeatedScalarFieldContainer[float]
    batch_rule: _common_pb2.BatchGoodputRule
    def __init__(self, num_accepted: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., max_draft_tokens: _Optional[int] = ..., min_confidence: _Optional[float] = ..., min_accept_prob: _Optional[float] = ..., acceptance_curve: _Optional[_Iterable[float]] = ..., batch_rule: _Optional[_Union[_common_pb2.BatchGoodputRule, _Mapping]] = ...) -> None: ...

class DraftRequest(_message.Message):
    __slots__ = ("open", "step", "traceparent")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    open: DraftOpen
    step: DraftStep
    traceparent: str
    def __init__(self, open: _Optional[_Union[DraftOpen, _Mapping]] = ..., step: _Optional[_Union[DraftStep, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class DraftResponse(_message.Message):
    __slots__ = ("drafts", "queue_ms", "step_ms")
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    drafts: _common_pb2.DraftTokens
    queue_ms: float
    step_ms: float
    def __init__(self, drafts: _Optional[_Union[_common_pb2.DraftTokens, _Mapping]] = ..., queue_ms: _Optional[float] = ..., step_ms: _Optional[float] = ...) -> None: ...
