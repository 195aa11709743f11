"""The request window of one `adaspec bench`: each request's prompt, output length and SLO, and the send times.

Built once per bench; every (round, rate, policy) run replays it, so that runs differ only in the policy, the
rate and the machine's noise.

- With a trace: `num_requests` consecutive rows from `trace_start_s` (or a seeded start: `adaspec.workload.window`);
  arrivals keep the trace's gaps up to one factor per rate (the bursts are kept), token counts are mapped into
  the limits.
- Without one: vLLM's random dataset at fixed sizes (`input_len`, `output_len`) and its gamma arrivals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaspec.bench.arrivals import at_rate, gamma_arrivals
from adaspec.bench.config import BenchConfig
from adaspec.bench.datasets import dataset_prompts
from adaspec.bench.slo import SloClass, assign_classes
from adaspec.workload import ATTRIBUTION, TraceRequest, find_trace, load_trace, synthetic_window, window
from adaspec.workload.trace import window_start

AZURE_TRACES = {"azure-code": "azure_llm_2023_code", "azure-conv": "azure_llm_2023_conv"}


@dataclass(frozen=True)
class BenchRequest:
    index: int  # position in the window
    prompt: str
    prompt_tokens: int  # the prompt's length in the tokenizer's tokens
    max_tokens: int  # output tokens asked for (all of them with ignore_eos)
    slo_class: str | None
    slo_ttft_ms: float | None
    slo_tpot_ms: float | None


@dataclass(frozen=True)
class Workload:
    requests: list[BenchRequest]
    unit_arrivals: np.ndarray  # send times (s) at a mean rate of 1 request/s
    description: str

    def arrivals(self, rate: float) -> np.ndarray:
        """Send times (s from the start of a run) at `rate` requests/s."""
        return at_rate(self.unit_arrivals, rate)


def trace_window(config: BenchConfig) -> tuple[list[TraceRequest], str]:
    """The trace's window at 1 request/s (arrivals and mapped token counts), and where it came from.
    `azure-code` without the shared data falls back to a synthetic window with its statistics, as the demo does;
    `azure-conv` has no bundled statistics, so it needs the file."""
    kw = dict(num_requests=config.num_requests, mean_rate_rps=1.0, max_prompt_tokens=config.max_prompt_tokens,
              max_output_tokens=config.max_output_tokens, min_output_tokens=config.min_output_tokens,
              seed=config.seed, start_s=config.trace_start_s)
    name = AZURE_TRACES.get(config.trace)
    if name is not None:
        path = find_trace(name)
        if path is None and config.trace == "azure-code":
            description = (f"{config.num_requests} synthetic requests with the statistics of {name}.csv (trace not "
                           f"found; set ADASPEC_TRACES_DIR). Data: {ATTRIBUTION}.")
            return synthetic_window(**kw), description
        if path is None:
            raise FileNotFoundError(f"{name}.csv not found (set ADASPEC_TRACES_DIR to the folder holding it); "
                                    f"{config.trace} has no synthetic fallback")
    else:
        path = Path(config.trace)
        if not path.is_file():
            raise FileNotFoundError(f"--trace {config.trace}: no such file (or azure-code, azure-conv)")
    rows = load_trace(path)
    start = rows[window_start(rows, config.trace_start_s, config.num_requests, config.seed)].arrival_s
    credit = f" Data: {ATTRIBUTION}." if name else ""
    return window(rows, **kw), (f"{config.num_requests} consecutive requests of {path.name} from t={start:.1f} s, "
                                f"arrivals rescaled to each request rate.{credit}")


def request_slos(config: BenchConfig, rng: np.random.Generator) -> list[SloClass | None]:
    """Each request's SLO class (None without classes: `slo_ttft_ms` / `slo_tpot_ms` for all)."""
    if not config.slo_classes:
        return [None] * config.num_requests
    return assign_classes(config.slo_classes, config.num_requests, rng)


def build_workload(config: BenchConfig, tokenize: Callable[[str], list[int]]) -> Workload:
    """The bench's requests and send times; same config and seed, same workload."""
    arrival_rng, class_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    if config.trace:
        rows, description = trace_window(config)
        unit_arrivals = np.array([r.arrival_s for r in rows])
        prompt_counts, output_counts = [r.prompt_tokens for r in rows], [r.output_tokens for r in rows]
    else:
        unit_arrivals = gamma_arrivals(config.num_requests, config.burstiness, arrival_rng)
        prompt_counts = [config.input_len] * config.num_requests
        output_counts = [config.output_len] * config.num_requests
        description = (f"{config.num_requests} requests of {config.input_len} prompt and {config.output_len} output "
                       f"tokens, gamma arrivals (burstiness {config.burstiness:g}).")
    prompts = dataset_prompts(config.dataset, prompt_counts, config.seed, tokenize)
    requests = []
    slos = request_slos(config, class_rng)
    for i, (prompt, output_tokens, slo) in enumerate(zip(prompts, output_counts, slos, strict=True)):
        if slo is None:
            name, ttft_ms, tpot_ms = None, config.slo_ttft_ms, config.slo_tpot_ms
        else:  # a class without its own TTFT limit takes the bench's
            ttft_ms = slo.ttft_ms if slo.ttft_ms is not None else config.slo_ttft_ms
            name, tpot_ms = slo.name, slo.tpot_ms
        requests.append(BenchRequest(i, prompt, len(tokenize(prompt)), int(output_tokens), name, ttft_ms, tpot_ms))
    return Workload(requests, unit_arrivals, f"{description} Prompts: {config.dataset}.")
