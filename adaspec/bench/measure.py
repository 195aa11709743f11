"""One request, timed on the client as `vllm bench serve` times it, whatever the backend.

- TTFT: from sending the request to the first chunk that carries tokens.
- ITL: the gaps between successive chunks that carry tokens. Under speculation a chunk may carry several
  tokens; the gaps are per chunk, as vLLM records them per streamed chunk.
- E2EL: from sending to the last chunk that carries tokens (so E2EL - TTFT is the sum of the ITLs).
- TPOT: (E2EL - TTFT) / (output tokens - 1); none under 2 tokens.
The output token count is the server's where it reports one (vLLM prefers the usage count too), else the
tokens the chunks carried.
"""

from __future__ import annotations

import itertools
import time

from adaspec.bench.backend import Backend, RequestFailed
from adaspec.bench.workload import BenchRequest
from adaspec.workload import meets_slo


async def timed_request(backend: Backend, request: BenchRequest, *, policy: str, temperature: float,
                        ignore_eos: bool) -> dict:
    """Send `request` and return its record (`request_record`); a failed request is a record with `ok` False."""
    token_times: list[float] = []
    tokens = 0
    stats: dict = {}
    failure = None
    sent = time.perf_counter()
    try:
        async for delta in backend.stream(request.prompt, max_tokens=request.max_tokens, temperature=temperature,
                                          ignore_eos=ignore_eos, policy=policy, ttft_ms=request.slo_ttft_ms,
                                          tpot_ms=request.slo_tpot_ms):
            if delta.tokens:
                token_times.append(time.perf_counter())
                tokens += delta.tokens
            stats = {**stats, **delta.stats} if delta.stats else stats  # a server may send them in pieces
    except RequestFailed as error:
        failure = error
    return request_record(request, sent, token_times, tokens, stats, failure)


def request_record(request: BenchRequest, sent: float, token_times: list[float], tokens: int, stats: dict,
                   failure: RequestFailed | None) -> dict:
    """The per-request record the metrics and the JSON use: timings in ms, the server's statistics, the SLO
    the request carried and whether the client's timings met it (`slo_met`; None when it carried none)."""
    ttft_ms = (token_times[0] - sent) * 1e3 if token_times else None
    e2el_ms = (token_times[-1] - sent) * 1e3 if token_times else None
    output_tokens = int(stats.get("output_tokens", tokens))
    tpot_ms = (e2el_ms - ttft_ms) / (output_tokens - 1) if token_times and output_tokens > 1 else None
    has_slo = request.slo_ttft_ms is not None or request.slo_tpot_ms is not None
    ok = failure is None
    return {
        "index": request.index, "class": request.slo_class, "prompt_tokens": request.prompt_tokens,
        "max_tokens": request.max_tokens, "ok": ok,
        "error": None if ok else str(failure), "error_code": None if ok else failure.code,
        "output_tokens": output_tokens if ok else tokens,
        "ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "e2el_ms": e2el_ms,
        "itl_ms": [round((b - a) * 1e3, 3) for a, b in itertools.pairwise(token_times)],  # to the µs: a smaller JSON
        "draft_tokens": stats.get("draft_tokens"), "accepted_tokens": stats.get("accepted_tokens"),
        "acceptance_rate": stats.get("acceptance_rate"), "mean_k": stats.get("mean_k"),
        "slo_ttft_ms": request.slo_ttft_ms, "slo_tpot_ms": request.slo_tpot_ms,
        "slo_met": (ok and meets_slo(ttft_ms, tpot_ms, request.slo_ttft_ms, request.slo_tpot_ms)) if has_slo else None,
        "server_slo_met": stats.get("server_slo_met"), "server_policy": stats.get("server_policy"),
    }
