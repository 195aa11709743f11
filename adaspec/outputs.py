"""What a finished request returns. Pure Python: shared by the engine and the SDK."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS, stop token or stop string), "length", or "abort"
    stats: dict = field(default_factory=dict)  # steps, draft/accepted tokens, acceptance_rate, mean_k, ttft_s, tpot_s
