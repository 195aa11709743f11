"""How many prompt tokens one step may carry: chunked prefill that keeps the decoding requests' TPOT SLOs.

A prompt chunk lengthens the step for every request decoding in it. On hardware where a token of prefill is not
nearly free (this project's CPU: 0.2 ms per token beside a 12 ms forward), one step that prefills a burst of
prompts at once — 2048 tokens, `max_num_batched_tokens` — stalls every decoding request for hundreds of ms and
breaks a tight TPOT SLO by itself. Sarathi-Serve's answer is a fixed token budget per step; here the budget comes
from the SLOs and the latency profile, per step:

    X_i = E_i · (m·s_i + (m·s_i·(n_i − 1) − e_i) / r_i)

is the longest step decoding request i can take now and keep its TPOT within m = 85 % of its SLO s_i at its end:
per token it is expected to commit in the step (E_i: 1 for a plain step, more with drafts), its own token's
allowance m·s_i and its slack (n_i tokens out, e_i since its first) spread over the r_i tokens it has left, so
that such steps until its end bring its TPOT to m·s_i exactly. Behind its pace (negative slack) it catches up the
same way. A request that can no longer meet its SLO, or has none, sets no bound. The margin is for what the
engine does not see of a token's time (the hop to the coordinator and back, the wait for a batch to gather):
steps sized to the SLO itself came out a few ms over it, token after token. Two earlier bounds let one step take
far more than a token's time, and a burst of prompts prefilled in it stalled the requests decoding for
100-250 ms: one counted what the request's next tokens would win back at the plain step's pace, the other
(X_i = m·s_i·n_i − e_i) spent all of a request's slack at once. Without E_i, steps that verify drafts (longer,
and worth several tokens) left prompts the minimum, and past saturation prompts queued.

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
from adaspec.speculation.step_state import SLO_MARGIN, RequestState

MIN_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class WaitingPrompt:
    """A prompt (or what is left of it) waiting for prefill, in the order prefill serves them."""

    tokens: int
    ttft_left_ms: float = math.inf  # before its TTFT deadline (inf: no TTFT SLO)


def longest_step_ms(request: RequestState, step_tokens: float = 1.0) -> float:
    """X_i (module docstring): the longest step `request` can take now, committing `step_tokens` (E_i), and keep
    its TPOT within its SLO at its end, less the margin; inf when it sets no bound (no SLO, no first token yet, no
    token left, or its SLO lost whatever happens), 0 when it is behind the margin's pace. m·s_i + (m·s_i·(n_i − 1)
    − e_i) / r_i is the time per token the request's tokens left may take (`RequestState.allowed_token_ms`)."""
    return step_tokens * request.allowed_token_ms(SLO_MARGIN)


def prompt_token_budget(verify: LatencyModel, decoding: Sequence[RequestState], *, batch: int, query_tokens: int,
                        context: float, overhead_ms: float, prompts: Sequence[WaitingPrompt],
                        max_tokens: int, step_tokens: Sequence[float] = ()) -> int:
    """The prompt tokens this step may carry (module docstring), at most `max_tokens`. `batch`, `query_tokens`,
    `context`: the step's decoding rows (sequences, their query tokens, their mean context) without prompts;
    `step_tokens[i]`: the tokens `decoding[i]` is expected to commit in the step (E_i; 1 when not given)."""
    if max_tokens <= 0 or not prompts:
        return max(0, max_tokens)
    expected = list(step_tokens) + [1.0] * (len(decoding) - len(step_tokens))
    cap_ms = min((longest_step_ms(r, e) for r, e in zip(decoding, expected)), default=math.inf)
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
