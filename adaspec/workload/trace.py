"""Azure LLM code trace: load it, cut a replay window, or generate a window with the same statistics.

The trace (`TIMESTAMP,ContextTokens,GeneratedTokens`) is read from `../shared/data/traces/` and never
copied into the project. Where it is absent, `synthetic_window` samples from `azure_code_stats.json`,
derived statistics (quantiles, correlations; no raw rows) written by `scripts/trace_stats.py`.

Credit: "Azure LLM inference trace 2023" (Azure Public Dataset, CC BY 4.0) and Patel et al.,
"Splitwise: Efficient Generative LLM Inference Using Phase Splitting", ISCA 2024.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

DEFAULT_TRACE = "azure_llm_2023_code"
STATS_PATH = Path(__file__).with_name("azure_code_stats.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
ATTRIBUTION = ('"Azure LLM inference trace 2023" (Azure Public Dataset, CC BY 4.0); '
               "Patel et al., Splitwise, ISCA 2024")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TOKEN_QUANTILE = 99.0  # the trace percentile that `window` maps onto the model's token limit


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def find_trace(name: str = DEFAULT_TRACE) -> Path | None:
    """`<name>.csv` in `$ADASPEC_TRACES_DIR` if that variable is set (and then only there, so that tests
    can hide the shared data by pointing it at an empty folder), else in `<repo root>/../shared/data/traces/`."""
    env = os.environ.get("ADASPEC_TRACES_DIR")
    folder = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "traces"
    path = folder / f"{name}.csv"
    return path if path.is_file() else None


def _timestamp_ns(text: str) -> int:
    """`2023-11-16 18:17:03.9799600` (UTC assumed) or a number of seconds such as `12.25` -> integer
    nanoseconds (since the epoch for a date-time), exactly. Digits past the nanosecond are dropped."""
    text = text.strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        return _datetime_ns(text)
    if not seconds.is_finite():
        raise ValueError(f"timestamp {text!r} is not a finite number of seconds")
    return int(seconds.scaleb(9))


def _datetime_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    seconds = (dt - _EPOCH) // timedelta(seconds=1)
    frac_ns = int((frac + "0" * 9)[:9])
    return seconds * 1_000_000_000 + frac_ns


def load_trace(path: str | Path) -> list[TraceRequest]:
    """All rows, in time order, with `arrival_s` relative to the first (earliest) row. A TIMESTAMP is a
    date-time as in the Azure traces (`2023-11-16 18:17:03.9799600`) or a number of seconds (`0`, `12.25`);
    either is parsed to integer nanoseconds, so the only rounding is the final division to float seconds."""
    with open(path, newline="") as f:
        rows = [(_timestamp_ns(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
                for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])  # stable; the published traces are already in order
    t0 = rows[0][0]
    return [TraceRequest((t - t0) / 1e9, c, g) for t, c, g in rows]


def _map_tokens(values: np.ndarray, ref: float, lo: int, hi: int) -> np.ndarray:
    scale = min(1.0, hi / ref) if ref > 0 else 1.0
    return np.clip(np.rint(values * scale), lo, hi).astype(int)


def _check(num_requests: int, mean_rate_rps: float, max_prompt_tokens: int, max_output_tokens: int,
           min_output_tokens: int) -> None:
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not mean_rate_rps > 0:
        raise ValueError(f"mean_rate_rps must be > 0, got {mean_rate_rps}")
    if max_prompt_tokens < 1 or not 1 <= min_output_tokens <= max_output_tokens:
        raise ValueError("need max_prompt_tokens >= 1 and 1 <= min_output_tokens <= max_output_tokens, got "
                         f"{max_prompt_tokens}, {min_output_tokens}, {max_output_tokens}")


def _assemble(gaps: np.ndarray, prompts: np.ndarray, outputs: np.ndarray, p_ref: float, o_ref: float,
              mean_rate_rps: float, max_prompt_tokens: int, max_output_tokens: int,
              min_output_tokens: int) -> list[TraceRequest]:
    n = len(prompts)
    span = float(gaps.sum())
    factor = (n - 1) / (mean_rate_rps * span) if n > 1 and span > 0 else 0.0
    arrivals = np.concatenate([[0.0], np.cumsum(gaps * factor)])
    p = _map_tokens(prompts, p_ref, 1, max_prompt_tokens)
    o = _map_tokens(outputs, o_ref, min_output_tokens, max_output_tokens)
    return [TraceRequest(float(a), int(x), int(y)) for a, x, y in zip(arrivals, p, o)]


def window_start(requests: list[TraceRequest], start_s: float | None, num_requests: int, seed: int) -> int:
    """Index of the window's first row: the first row at or after `start_s`, or (None) a seeded random row."""
    last = len(requests) - num_requests
    if last < 0:
        raise ValueError(f"the trace has {len(requests)} rows, fewer than num_requests={num_requests}")
    if start_s is None:
        return int(np.random.default_rng(seed).integers(0, last + 1))
    i = next((i for i, r in enumerate(requests) if r.arrival_s >= start_s), len(requests))
    if i > last:
        raise ValueError(f"start_s={start_s} leaves fewer than {num_requests} rows in the trace")
    return i


def window(requests: list[TraceRequest], *, start_s: float | None = None, num_requests: int,
           mean_rate_rps: float, max_prompt_tokens: int, max_output_tokens: int, min_output_tokens: int = 1,
           seed: int = 0) -> list[TraceRequest]:
    """A contiguous window of `num_requests` rows of `requests`, mapped onto a model and a machine.

    - Start: the first row at or after `start_s` seconds into the trace; None picks a row at random (`seed`).
    - Arrivals: the first request arrives at 0; every inter-arrival gap is multiplied by one factor so that
      the mean rate, (n - 1) / last arrival, equals `mean_rate_rps`. Order and burst shape (the ratios
      between gaps) are kept.
    - Tokens: each count is multiplied by `max / p99`, p99 being the 99th percentile of that column over
      all of `requests` (so every window of a trace uses the same scale), then rounded and clipped to
      [1, max_prompt_tokens] for prompts and [min_output_tokens, max_output_tokens] for outputs. The scale
      is capped at 1: a trace that already fits is not inflated. Relative sizes are kept below the p99;
      the top 1 % is clipped to the maximum.
    """
    _check(num_requests, mean_rate_rps, max_prompt_tokens, max_output_tokens, min_output_tokens)
    i = window_start(requests, start_s, num_requests, seed)
    rows = requests[i:i + num_requests]
    t = np.array([r.arrival_s for r in rows])
    p_ref = float(np.percentile([r.prompt_tokens for r in requests], TOKEN_QUANTILE))
    o_ref = float(np.percentile([r.output_tokens for r in requests], TOKEN_QUANTILE))
    return _assemble(np.diff(t), np.array([r.prompt_tokens for r in rows], float),
                     np.array([r.output_tokens for r in rows], float), p_ref, o_ref, mean_rate_rps,
                     max_prompt_tokens, max_output_tokens, min_output_tokens)


def load_stats(path: str | Path = STATS_PATH) -> dict:
    return json.loads(Path(path).read_text())


_PHI = np.frompyfunc(lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))), 1, 1)


def _from_quantiles(percent: list[float], q: list[float], z: np.ndarray) -> np.ndarray:
    """Inverse CDF through a quantile table (`percent` -> value), linear between entries, at Phi(z)."""
    u = _PHI(z).astype(float)
    return np.interp(u * 100.0, np.asarray(percent, float), np.asarray(q, float))


def synthetic_window(*, start_s: float | None = None, num_requests: int, mean_rate_rps: float,
                     max_prompt_tokens: int, max_output_tokens: int, min_output_tokens: int = 1, seed: int = 0,
                     stats: dict | None = None) -> list[TraceRequest]:
    """A window with the trace's statistics, generated from `azure_code_stats.json` (a Gaussian copula).

    - Marginals: empirical quantiles (0, 1, ..., 100 % plus 0.1, 0.5, 99.5, 99.9, 99.99 %) of the log
      inter-arrival gap, ContextTokens and GeneratedTokens; a sample is the table read at Phi(z), linear
      between entries.
    - Dependence: context and generated tokens of one request share the normal-score correlation measured on
      the trace (about -0.02: nearly independent). The gaps' normal scores follow
      z_t = sqrt(w) s_t + sqrt(1 - w) e_t, s an AR(1) with coefficient phi, fitted to the trace's gap
      autocorrelation over lags 1..100 (w * phi^lag): the slow swings of the rate that make bursts.
      Nothing else (time of day, longer memory, correlation between sizes and gaps) is reproduced.
    - Then the same arrival rescaling and token mapping as `window`, with the p99 taken from the table.
    `start_s` is accepted for symmetry with `window` and ignored (the model is stationary); same seed, same
    window.
    """
    _check(num_requests, mean_rate_rps, max_prompt_tokens, max_output_tokens, min_output_tokens)
    st = stats or load_stats()
    rng = np.random.default_rng(seed)
    n = num_requests
    w, phi = st["gap_model"]["weight"], st["gap_model"]["phi"]
    s = np.empty(max(n - 1, 0))
    if n > 1:
        s[0] = rng.standard_normal()
        for j in range(1, n - 1):
            s[j] = phi * s[j - 1] + math.sqrt(1 - phi * phi) * rng.standard_normal()
    zg = math.sqrt(w) * s + math.sqrt(1 - w) * rng.standard_normal(n - 1)
    rho = st["context_generated_normal_score_corr"]
    zc = rng.standard_normal(n)
    zo = rho * zc + math.sqrt(1 - rho * rho) * rng.standard_normal(n)
    qs = st["quantiles"]
    pct = qs["percent"]
    gaps = np.exp(_from_quantiles(pct, qs["log_gap_s"], zg))
    prompts = np.rint(_from_quantiles(pct, qs["context_tokens"], zc))
    outputs = np.rint(_from_quantiles(pct, qs["generated_tokens"], zo))
    p_ref = float(np.interp(TOKEN_QUANTILE, pct, qs["context_tokens"]))
    o_ref = float(np.interp(TOKEN_QUANTILE, pct, qs["generated_tokens"]))
    return _assemble(gaps, prompts, outputs, p_ref, o_ref, mean_rate_rps, max_prompt_tokens,
                     max_output_tokens, min_output_tokens)


def demo_window(*, num_requests: int, mean_rate_rps: float, max_prompt_tokens: int, max_output_tokens: int,
                min_output_tokens: int = 1, seed: int = 0, start_s: float | None = None,
                name: str = DEFAULT_TRACE) -> tuple[list[TraceRequest], str]:
    """The real trace's window when the trace is found (`find_trace`), else a synthetic one; returns the
    requests and a one-line description of their source with the attribution."""
    kw = dict(start_s=start_s, num_requests=num_requests, mean_rate_rps=mean_rate_rps,
              max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens,
              min_output_tokens=min_output_tokens, seed=seed)
    path = find_trace(name)
    if path is not None:
        requests = load_trace(path)
        reqs = window(requests, **kw)
        t0 = requests[window_start(requests, start_s, num_requests, seed)].arrival_s
        desc = (f"{num_requests} consecutive requests of {path.name} from t={t0:.1f} s, arrivals rescaled to "
                f"{mean_rate_rps:g} req/s. Data: {ATTRIBUTION}.")
    else:
        reqs = synthetic_window(**kw)
        desc = (f"{num_requests} synthetic requests at {mean_rate_rps:g} req/s, sampled from statistics of "
                f"{name}.csv (trace not found; set ADASPEC_TRACES_DIR). Data: {ATTRIBUTION}.")
    return reqs, desc
