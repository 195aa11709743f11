"""`adaspec demo`: the stack on the bundled models, replaying a window of the Azure code trace.

Arrival times and token counts come from the trace (`../shared/data/traces/`, or a synthetic window
with its statistics where that folder is absent), scaled to this machine; prompt text is held-out
Python source cut to each request's prompt length. Every request goes through the SDK over gRPC, once
per policy, and the summary table compares them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from tqdm import tqdm

from adaspec.client import AsyncClient
from adaspec.errors import AdaSpecError
from adaspec.stack import Stack, StackConfig
from adaspec.workload import demo_window, format_table, prompt_for, prompt_texts, summarize, tokenizer_for

COLUMNS = [
    ("policy", "policy"), ("requests", "requests"), ("failed", "failed"),
    ("output_tok_s", "out tok/s", ".1f"), ("ttft_p50_ms", "TTFT p50 ms", ".0f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".0f"), ("tpot_p50_ms", "TPOT p50 ms", ".1f"),
    ("tpot_p99_ms", "TPOT p99 ms", ".1f"), ("slo_attainment", "SLO met", ".0%"), ("mean_k", "mean k", ".2f"),
    ("acceptance_rate", "acceptance", ".2f"),
]


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=40, help="requests in the trace window")
    parser.add_argument("--rate", type=float, default=2.0, help="mean arrival rate (requests/s)")
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--max-output-tokens", type=int, default=128)
    parser.add_argument("--min-output-tokens", type=int, default=16)
    parser.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=50.0)
    parser.add_argument("--compare", default="none", help="policy to compare with --policy ('' for none)")
    parser.add_argument("--seed", type=int, default=0)


def run_demo(args, config: StackConfig) -> int:
    requests, source = demo_window(num_requests=args.requests, mean_rate_rps=args.rate,
                                   max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                                   min_output_tokens=args.min_output_tokens, seed=args.seed)
    tokenize = tokenizer_for(config.target)
    snippets = prompt_texts(len(requests), seed=args.seed)
    prompts = [prompt_for(r.prompt_tokens, snippets[i], tokenize) for i, r in enumerate(requests)]
    print(f"workload: {source}")
    print(f"{len(requests)} requests over {requests[-1].arrival_s:.1f} s; prompts up to {args.max_prompt_tokens} "
          f"tokens, outputs up to {args.max_output_tokens}; SLO TTFT {args.slo_ttft_ms:.0f} ms, "
          f"TPOT {args.slo_tpot_ms:.0f} ms")
    print("starting the stack (verify, draft, coordinator) ...", flush=True)
    rows = []
    with Stack(config) as stack:
        print(f"coordinator at {stack.address}; service logs in {stack.log_dir}")
        for policy in [p for p in (args.compare, config.policy) if p]:
            results, wall_s = asyncio.run(_replay(stack.address, requests, prompts, policy, args))
            rows.append({"policy": policy, **summarize(results, wall_s, args.slo_ttft_ms, args.slo_tpot_ms)})
    print()
    print(format_table(rows, COLUMNS))
    errors = sum((Counter(row.get("errors", {})) for row in rows), Counter())
    for error, count in errors.items():
        print(f"  {count} x {error}")
    return 1 if any(row["failed"] for row in rows) else 0


async def _replay(address: str, requests, prompts, policy: str, args) -> tuple[list[dict], float]:
    bar = tqdm(total=len(requests), desc=f"replay {policy}", unit="req")
    async with AsyncClient(address, timeout=120) as client:
        await client.generate(prompts[0], max_tokens=4, temperature=0, policy=policy)  # warm-up
        start = time.perf_counter()

        async def one(i: int) -> dict:
            await asyncio.sleep(max(0.0, start + requests[i].arrival_s - time.perf_counter()))
            try:
                result = await _stream(client, prompts[i], requests[i].output_tokens, policy, args)
            except AdaSpecError as error:
                result = {"ok": False, "error": f"{error.code.name}: {error.message}"}
            bar.update()
            return result

        results = await asyncio.gather(*(one(i) for i in range(len(requests))))
        wall_s = time.perf_counter() - start
    bar.close()
    return list(results), wall_s


async def _stream(client: AsyncClient, prompt: str, max_tokens: int, policy: str, args) -> dict:
    """Client-side TTFT and TPOT (what a user sees), the server's draft statistics."""
    sent = time.perf_counter()
    first = None
    stats = None
    async for chunk in client.stream(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True, policy=policy,
                                     ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms):
        if first is None and chunk.token_ids:
            first = time.perf_counter()
        stats = chunk.stats or stats
    end = time.perf_counter()
    n = stats.output_tokens
    return {
        "ok": True, "error": None, "output_tokens": n, "ttft_s": first - sent,
        "tpot_s": (end - first) / (n - 1) if n > 1 else None,
        "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens, "mean_k": stats.mean_k,
    }

