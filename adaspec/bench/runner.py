"""The benchmark loop: every (round, rate, policy) run replays the workload through one backend connection.

A run sends its warm-up requests (not measured), then the window's requests, each at its send time at the run's
rate, all in flight at once. With `max_concurrency`, a request due while that many are in flight waits for one
to end, and its clock starts when it is sent (vLLM's semaphore). The run's duration is from its start until its
last request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from datetime import UTC, datetime

from tqdm import tqdm

from adaspec.bench.arrivals import rate_label
from adaspec.bench.backend import Backend, open_backend
from adaspec.bench.config import BenchConfig, server_policy
from adaspec.bench.measure import timed_request
from adaspec.bench.metrics import aggregate_rows, run_row
from adaspec.bench.plan import run_order
from adaspec.bench.workload import Workload, build_workload
from adaspec.workload import tokenizer_for

WARMUP_MAX_TOKENS = 16  # a warm-up request only has to pass through every stage once


def run_bench(config: BenchConfig, target: str) -> dict:
    """Run every (round, rate, policy) of `config` against `target` (for the `adaspec` backend, the coordinator's
    HOST:PORT) and return the results: `config`, `workload` (where the requests came from), `rows` (one per
    rate and policy, pooled over rounds), `runs` (one per round, rate and policy, in the order they ran) and
    `requests` (one record per measured request, `adaspec.bench.measure.request_record` plus policy, rate,
    round and send time)."""
    workload = build_workload(config, tokenizer_for(config.tokenizer))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    runs, records = asyncio.run(_run_all(config, target, workload))
    return {
        "date": started, "target": target, "config": config.to_json(), "workload": workload.description,
        "rows": aggregate_rows(runs, records, config.policies, config.request_rates, config.goodput,
                               config.baseline_policy),
        "runs": runs, "requests": records,
    }


async def _run_all(config: BenchConfig, target: str, workload: Workload) -> tuple[list[dict], list[dict]]:
    order = run_order(config.policies, config.request_rates, config.rounds, config.alternate_rates)
    runs, records = [], []
    with tqdm(total=len(order) * len(workload.requests), unit="req") as bar:
        async with open_backend(config.backend, target, model=config.model, timeout_s=config.request_timeout_s,
                                max_retries=config.max_retries) as backend:
            for round_index, rate, policy in order:
                bar.set_description(f"round {round_index + 1}/{config.rounds}, {rate_label(rate)} req/s, {policy}")
                warmup_failed = await _warm_up(backend, workload, policy, config)
                run_records, duration_s = await _replay(backend, workload, rate, policy, config, bar)
                run_records = [{"policy": policy, "rate": rate, "round": round_index, **r} for r in run_records]
                runs.append(run_row(policy, rate, round_index, run_records, duration_s, config.goodput,
                                    warmup_failed))
                records += run_records
    return runs, records


def _slots(config: BenchConfig) -> contextlib.AbstractAsyncContextManager:
    return asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else contextlib.nullcontext()


async def _warm_up(backend: Backend, workload: Workload, policy: str, config: BenchConfig) -> int:
    """Send the window's first `warmup_requests` requests at once (at most `WARMUP_MAX_TOKENS` output tokens
    each) and wait for them; returns how many failed."""
    slots = _slots(config)
    n = len(workload.requests)

    async def one(i: int) -> dict:
        request = workload.requests[i % n]
        short = dataclasses.replace(request, max_tokens=min(request.max_tokens, WARMUP_MAX_TOKENS))
        async with slots:
            return await timed_request(backend, short, policy=server_policy(policy), temperature=config.temperature,
                                       ignore_eos=config.ignore_eos)

    results = await asyncio.gather(*(one(i) for i in range(config.warmup_requests)))
    return sum(not r["ok"] for r in results)


async def _replay(backend: Backend, workload: Workload, rate: float, policy: str, config: BenchConfig,
                  bar: tqdm) -> tuple[list[dict], float]:
    slots = _slots(config)
    start = time.perf_counter()

    async def one(request, send_at: float) -> dict:
        await asyncio.sleep(max(0.0, start + send_at - time.perf_counter()))
        async with slots:
            sent_s = time.perf_counter() - start
            record = await timed_request(backend, request, policy=server_policy(policy), temperature=config.temperature,
                                         ignore_eos=config.ignore_eos)
        bar.update()
        return {**record, "send_s": sent_s}

    send_times = workload.arrivals(rate)
    records = await asyncio.gather(*(one(r, float(t)) for r, t in zip(workload.requests, send_times, strict=True)))
    return list(records), time.perf_counter() - start
