"""How many prompt tokens one step may carry: chunked prefill that keeps the decoding requests' TPOT SLOs.

A prompt chunk lengthens the step for every request decoding in it. On hardware where a token of prefill is not
nearly free (this project's CPU: 0.2 ms per token beside a 12 ms forward), one step that prefills a burst of
prompts at once — 2048 tokens, `max_num_batched_tokens` — stalls every decoding request for hundreds of ms and
breaks a tight TPOT SLO by itself. Sarathi-Serve's answer is a fixed token budget per step; here the budget comes
from the SLOs and the latency profile, per step:

    X_i = m·s_i·n_i − e_i       (its slack now, m·s_i·(n_i − 1) − e_i, and this token's own m·s_i)

is the longest step decoding request i can take now and keep its running TPOT within m = 85 % of its SLO s_i (n_i
tokens out, e_i since its first; a request that can no longer meet its SLO, or has none, sets no bound). The
margin is for what the engine does not see of a token's time (the hop to the coordinator and back, the wait for a
batch to gather): steps sized to the SLO itself came out a few ms over it, token after token. Only the slack it
has earned counts: a bound that banked on its coming steps being plain let a fresh request take a 180 ms step of
prompts at once, and the steps that followed, with the new requests decoding, were not plain.

The step's prompt tokens are the most whose predicted forward stays within min_i X_i, never fewer than
`MIN_PROMPT_TOKENS` (prompts always progress) nor than the waiting prompts need to meet their TTFT SLOs: prompt j,
with N_j prompt tokens left up to and including its own (first come, first served) and D_j ms left before its TTFT
deadline, needs N_j · T / D_j tokens in each step of length T (a prompt past its deadline claims nothing more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.speculation.latency_profile import LatencyModel
from adaspec.speculation.step_state import RequestState

MIN_PROMPT_TOKENS = 32
SLO_MARGIN = 0.85  # m: steps aim at this share of a TPOT SLO


@dataclass(frozen=True)
class WaitingPrompt:
    """A prompt (or what is left of it) waiting for prefill, in the order prefill serves them."""

    tokens: int
    ttft_left_ms: float = math.inf  # before its TTFT deadline (inf: no TTFT SLO)


def longest_step_ms(request: RequestState) -> float:
    """X_i (module docstring): the longest step `request` can take now and keep its running TPOT within its SLO,
    less the margin; inf when it sets no bound (no SLO, no first token yet, no token left, or its SLO lost
    whatever happens)."""
    s, e = request.tpot_slo_s, request.since_first_token_s
    if s is None or e is None or request.remaining_tokens < 1:
        return math.inf
    final_tokens = request.output_tokens + request.remaining_tokens
    if s * (final_tokens - 1) - e <= 0:
        return math.inf
    return (SLO_MARGIN * s * request.output_tokens - e) * 1e3


def prompt_token_budget(verify: LatencyModel, decoding: Sequence[RequestState], *, batch: int, query_tokens: int,
                        context: float, overhead_ms: float, prompts: Sequence[WaitingPrompt],
                        max_tokens: int) -> int:
    """The prompt tokens this step may carry (module docstring), at most `max_tokens`. `batch`, `query_tokens`,
    `context`: the step's decoding rows (sequences, their query tokens, their mean context) without prompts."""
    if max_tokens <= 0 or not prompts:
        return max(0, max_tokens)
    cap_ms = min((longest_step_ms(r) for r in decoding), default=math.inf)
    if math.isinf(cap_ms):
        return max_tokens

    def step_ms(tokens: int) -> float:
        return overhead_ms + verify.predict(batch + 1, query_tokens + tokens, context)

    within_cap, lo, hi = 0, 1, max_tokens  # the largest token count whose step fits the cap (the step grows with it)
    while lo <= hi:
        mid = (lo + hi) // 2
        if step_ms(mid) <= cap_ms:
            within_cap, lo = mid, mid + 1
        else:
            hi = mid - 1
    step = max(cap_ms, step_ms(within_cap))
    needed, ahead = 0, 0
    for prompt in prompts:
        ahead += prompt.tokens
        if 0 < prompt.ttft_left_ms < math.inf:
            needed = max(needed, math.ceil(ahead * step / prompt.ttft_left_ms))
    return min(max_tokens, max(within_cap, needed, MIN_PROMPT_TOKENS))
