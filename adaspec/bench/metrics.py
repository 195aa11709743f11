"""Benchmark metrics from per-request records, under `vllm bench serve`'s names and definitions.

- `request_throughput`: completed requests / duration; `output_throughput` (= `output_tok_s`): output tokens of
  the completed requests / duration; `total_token_throughput`: their prompt and output tokens / duration.
- `{mean,median,std,p99}_{ttft,tpot,itl,e2el}_ms` over the completed requests (ITL over all their chunk gaps),
  percentiles by numpy's linear interpolation; None where there is no value (vLLM writes 0).
- `slo_attainment`: completed requests that met the SLO they carried / all requests, so a failed request is a
  miss; None when the requests carried no SLO. `server_slo_attainment`: the same by the coordinator's `slo_met`.
- `goodput` (= vLLM's `request_goodput`, DistServe's goodput): completed requests that met every limit of
  `--goodput`, or without it their own SLO, per second of duration; None with neither.
- `mean_k`: mean over completed requests of each one's mean k; `acceptance_rate`: accepted / drafted tokens
  summed over completed requests.
- `classes`: with SLO classes, per class: requests, SLO attainment, TTFT and TPOT, goodput (over the run's duration).
- `mean_tpot_vs_baseline`: the run's mean TPOT over the baseline policy's in the same round and at the same rate;
  with several rounds the median of those ratios, and their min and max as `_min` / `_max`. A ratio of two runs
  moments apart is what this machine's drift leaves comparable; an A/A pair (the baseline again as `POLICY#TAG`)
  shows how far two runs of the same policy differ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from adaspec.workload import meets_slo

DISTRIBUTIONS = ("ttft", "tpot", "itl", "e2el")
SPREAD_KEYS = ("mean_tpot_ms", "output_tok_s", "slo_attainment")  # min and max over rounds, when rounds > 1
CLASS_KEYS = ("requests", "failed", "slo_ttft_ms", "slo_tpot_ms", "slo_attainment", "mean_ttft_ms", "p99_ttft_ms",
              "mean_tpot_ms", "p99_tpot_ms", "goodput")


def distribution(name: str, values: Sequence[float]) -> dict:
    """`mean_`, `median_`, `std_`, `p99_{name}_ms` of `values` (ms); None for each when there are none."""
    if not len(values):
        return {f"{stat}_{name}_ms": None for stat in ("mean", "median", "std", "p99")}
    v = np.asarray(values, dtype=float)
    return {f"mean_{name}_ms": float(v.mean()), f"median_{name}_ms": float(np.median(v)),
            f"std_{name}_ms": float(v.std()), f"p99_{name}_ms": float(np.percentile(v, 99))}


def is_good(record: dict, goodput: dict[str, float] | None) -> bool:
    """Whether a request counts towards goodput: completed, and within every `goodput` limit (vLLM's
    `--goodput`), or without one within the SLO it carried."""
    if not record["ok"]:
        return False
    if goodput is None:
        return bool(record["slo_met"])
    return meets_slo(record["ttft_ms"], record["tpot_ms"], goodput.get("ttft"), goodput.get("tpot"),
                     record["e2el_ms"], goodput.get("e2el"))


def _share(flags: list[bool], total: int) -> float | None:
    return sum(flags) / total if total else None


def _metrics(records: list[dict], duration_s: float, goodput: dict[str, float] | None) -> dict:
    done = [r for r in records if r["ok"]]
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: None)
    input_tokens = sum(r["prompt_tokens"] for r in done)
    output_tokens = sum(r["output_tokens"] for r in done)
    has_slo = any(r["slo_met"] is not None for r in records)
    drafted = sum(r["draft_tokens"] or 0 for r in done)
    ks = [r["mean_k"] for r in done if r["mean_k"] is not None]
    out = {
        "requests": len(records), "completed": len(done), "failed": len(records) - len(done),
        "errors": dict(Counter(r["error"] for r in records if not r["ok"]).most_common()),
        "duration_s": duration_s, "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": per_s(len(done)), "output_throughput": per_s(output_tokens),
        "output_tok_s": per_s(output_tokens), "total_token_throughput": per_s(input_tokens + output_tokens),
    }
    for name in DISTRIBUTIONS:
        if name == "itl":
            values = [gap for r in done for gap in r["itl_ms"]]
        else:
            values = [r[f"{name}_ms"] for r in done if r[f"{name}_ms"] is not None]
        out.update(distribution(name, values))
    good = per_s(sum(is_good(r, goodput) for r in records)) if goodput is not None or has_slo else None
    out.update({
        "slo_attainment": _share([bool(r["slo_met"]) for r in records], len(records)) if has_slo else None,
        "server_slo_attainment": (_share([bool(r["server_slo_met"]) for r in records], len(records))
                                  if has_slo else None),
        "goodput": good, "request_goodput": good,
        "mean_k": float(np.mean(ks)) if ks else None,
        "acceptance_rate": sum(r["accepted_tokens"] or 0 for r in done) / drafted if drafted else None,
    })
    return out


def request_metrics(records: list[dict], duration_s: float, goodput: dict[str, float] | None = None) -> dict:
    """The metrics of requests that ran over `duration_s` seconds (see the module docstring)."""
    out = _metrics(records, duration_s, goodput)
    names = list(dict.fromkeys(r["class"] for r in records if r["class"] is not None))
    if names:
        out["classes"] = {}
        for name in names:
            mine = [r for r in records if r["class"] == name]
            figures = {**_metrics(mine, duration_s, goodput), "slo_ttft_ms": mine[0]["slo_ttft_ms"],
                       "slo_tpot_ms": mine[0]["slo_tpot_ms"]}
            out["classes"][name] = {key: figures[key] for key in CLASS_KEYS}
    return out


def run_row(policy: str, rate: float, round_index: int, records: list[dict], duration_s: float,
            goodput: dict[str, float] | None, warmup_failed: int) -> dict:
    """One run's row: its (policy, rate, round), metrics, and how many warm-up requests failed."""
    return {"policy": policy, "rate": rate, "round": round_index, **request_metrics(records, duration_s, goodput),
            "warmup_failed": warmup_failed}


def aggregate_rows(runs: list[dict], records: list[dict], policies: list[str], rates: list[float],
                   goodput: dict[str, float] | None, baseline: str | None = None) -> list[dict]:
    """One row per (rate, policy), in the configured orders: the metrics of the requests of all its rounds
    pooled over the rounds' summed duration (percentiles over every request, throughputs over the total time),
    with several rounds the min and max of each round's `SPREAD_KEYS` as `<key>_min` / `<key>_max`, and with a
    `baseline` policy the ratios of its rounds' mean TPOT to the baseline's (module docstring)."""
    rows = []
    for rate in rates:
        for policy in policies:
            mine = [run for run in runs if run["policy"] == policy and run["rate"] == rate]
            if not mine:
                continue
            pooled = [r for r in records if r["policy"] == policy and r["rate"] == rate]
            row = {"policy": policy, "rate": rate, "rounds": len(mine),
                   **request_metrics(pooled, sum(run["duration_s"] for run in mine), goodput),
                   "warmup_failed": sum(run["warmup_failed"] for run in mine)}
            if len(mine) > 1:
                for key in SPREAD_KEYS:
                    values = [run[key] for run in mine if run[key] is not None]
                    row[f"{key}_min"], row[f"{key}_max"] = (min(values), max(values)) if values else (None, None)
            if baseline is not None:
                row.update(_ratios("mean_tpot_vs_baseline", round_ratios(runs, policy, baseline, rate)))
            rows.append(row)
    return rows


def round_ratios(runs: list[dict], policy: str, baseline: str, rate: float) -> list[float]:
    """Per round at `rate`: `policy`'s mean TPOT over `baseline`'s (a round without either is left out)."""
    base = {run["round"]: run["mean_tpot_ms"] for run in runs if run["policy"] == baseline and run["rate"] == rate}
    return [run["mean_tpot_ms"] / base[run["round"]] for run in runs
            if run["policy"] == policy and run["rate"] == rate and run["mean_tpot_ms"] is not None
            and base.get(run["round"])]


def _ratios(key: str, ratios: list[float]) -> dict:
    """`key`: the median of per-round `ratios` (None without any); with several, also their `_min` and `_max`."""
    if len(ratios) < 2:
        return {key: ratios[0] if ratios else None}
    return {key: float(np.median(ratios)), f"{key}_min": min(ratios), f"{key}_max": max(ratios)}
