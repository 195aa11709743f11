"""Workloads for `adaspec demo`, `adaspec bench` and the service benchmarks: trace replay, prompt text,
result summaries.

No torch here: the demo's client side and the benchmarks import this without the engine.
"""

from adaspec.workload.prompts import held_out_files, prompt_for, prompt_texts, tokenizer_for
from adaspec.workload.report import format_table, meets_slo, summarize
from adaspec.workload.trace import (
    ATTRIBUTION,
    TraceRequest,
    demo_window,
    find_trace,
    load_stats,
    load_trace,
    synthetic_window,
    window,
)

__all__ = [
    "ATTRIBUTION",
    "TraceRequest",
    "demo_window",
    "find_trace",
    "format_table",
    "held_out_files",
    "load_stats",
    "load_trace",
    "meets_slo",
    "prompt_for",
    "prompt_texts",
    "summarize",
    "synthetic_window",
    "tokenizer_for",
    "window",
]
