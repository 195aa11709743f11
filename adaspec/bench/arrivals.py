"""When each request is sent: vLLM's gamma (Poisson) arrival process, and arrivals at each request rate.

A workload fixes its send times once at a mean rate of 1 request/s; `at_rate` divides them by each request
rate. Every rate then replays one sequence with one burst shape (only the time scale differs), and every
policy and round at a rate gets the same send times.
"""

from __future__ import annotations

import math

import numpy as np


def gamma_arrivals(num_requests: int, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send times (s) at a mean rate of 1 request/s, as `vllm bench serve` draws them.

    Inter-arrival times are gamma distributed with shape `burstiness` and mean 1: burstiness 1 is a Poisson
    process, below 1 is burstier (coefficient of variation 1/sqrt(burstiness) > 1), above 1 more even, and
    inf evenly spaced. As in vLLM, the first request waits its own gap, and the times are scaled so that
    the last request is sent at exactly `num_requests` s: the sampling error of the total would otherwise
    move the measured throughput by 1-2 % from seed to seed.
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(burstiness):
        gaps = np.ones(num_requests)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / burstiness, size=num_requests)
    times = np.cumsum(gaps)
    return times * (num_requests / times[-1])


def at_rate(unit_arrivals: np.ndarray, rate: float) -> np.ndarray:
    """`unit_arrivals` (send times at 1 request/s) at `rate` requests/s; an infinite rate sends every request
    at once (time 0), as vLLM's `--request-rate inf`."""
    if not rate > 0:
        raise ValueError(f"request rate must be > 0 (or inf), got {rate}")
    if math.isinf(rate):
        return np.zeros_like(unit_arrivals, dtype=float)
    return np.asarray(unit_arrivals, dtype=float) / rate


def rate_label(rate: float) -> str:
    """`inf` or the rate as `%g` (how rates appear in tables, plots and the JSON, as vLLM writes them)."""
    return "inf" if math.isinf(rate) else f"{rate:g}"
