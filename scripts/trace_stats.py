"""Regenerate `adaspec/workload/azure_code_stats.json` from the Azure LLM code trace (deterministic).

    python scripts/trace_stats.py                      # reads ../shared/data/traces/azure_llm_2023_code.csv
    python scripts/trace_stats.py --trace PATH --out PATH

The file holds derived statistics only (106 quantiles per quantity, a few correlations), never raw rows:
enough for `adaspec.workload.synthetic_window` to generate windows where the trace itself is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaspec.workload.trace import ATTRIBUTION, STATS_PATH, find_trace, load_trace  # noqa: E402

MAX_LAG = 100
# 0, 1, ..., 100 % plus finer tails: the largest gaps and outputs are far apart, and linear interpolation
# between the 99th percentile and the maximum would make them far too frequent.
PERCENT = sorted(set(range(101)) | {0.1, 0.5, 99.5, 99.9, 99.99})


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    r = np.empty(len(x))
    start = 0
    for end in np.append(np.flatnonzero(np.diff(sorted_x)) + 1, len(x)):
        r[order[start:end]] = (start + 1 + end) / 2.0
        start = end
    return r


def normal_scores(x: np.ndarray) -> np.ndarray:
    inv = NormalDist().inv_cdf
    return np.array([inv(u) for u in (ranks(x) - 0.5) / len(x)])


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def fit_gap_model(z: np.ndarray) -> tuple[float, float, list[float]]:
    """Least-squares fit of w * phi^lag to the gaps' normal-score autocorrelation, lags 1..MAX_LAG."""
    lags = np.arange(1, MAX_LAG + 1)
    acf = np.array([corr(z[:-k], z[k:]) for k in lags])
    best = (np.inf, 0.0, 0.0)
    for phi in np.arange(0.500, 0.9995, 0.001):
        p = phi ** lags
        w = float(np.clip(acf @ p / (p @ p), 0.0, 0.99))
        err = float(((acf - w * p) ** 2).sum())
        if err < best[0]:
            best = (err, w, float(phi))
    return best[1], best[2], acf.tolist()


def sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=find_trace())
    parser.add_argument("--out", type=Path, default=STATS_PATH)
    args = parser.parse_args()
    if args.trace is None:
        sys.exit("trace not found: pass --trace or set ADASPEC_TRACES_DIR")
    reqs = load_trace(args.trace)
    t = np.array([r.arrival_s for r in reqs])
    ctx = np.array([r.prompt_tokens for r in reqs], float)
    gen = np.array([r.output_tokens for r in reqs], float)
    gaps = np.diff(t)
    if (gaps <= 0).any():
        sys.exit("zero or negative inter-arrival gaps: log-gap quantiles undefined")
    log_gaps = np.log(gaps)
    z_gap = normal_scores(gaps)
    w, phi, acf = fit_gap_model(z_gap)
    pct = PERCENT
    spearman = corr(ranks(ctx), ranks(gen))
    stats = {
        "source": f"{args.trace.name}: Azure LLM inference trace 2023, code completion service "
                  "(Azure Public Dataset, collected 2023-11-16)",
        "licence": "CC BY 4.0",
        "citation": "Patel et al., Splitwise: Efficient Generative LLM Inference Using Phase Splitting, ISCA 2024",
        "attribution": ATTRIBUTION,
        "note": "Derived statistics only (no raw rows), written by scripts/trace_stats.py.",
        "rows": len(reqs),
        "duration_s": sig(float(t[-1])),
        "mean_rate_rps": sig((len(reqs) - 1) / float(t[-1])),
        "means": {"gap_s": sig(float(gaps.mean())), "context_tokens": sig(float(ctx.mean())),
                  "generated_tokens": sig(float(gen.mean()))},
        "quantiles": {
            "percent": pct,
            "log_gap_s": [sig(v) for v in np.percentile(log_gaps, pct)],
            "context_tokens": [sig(v) for v in np.percentile(ctx, pct)],
            "generated_tokens": [sig(v) for v in np.percentile(gen, pct)],
        },
        "context_generated_spearman": sig(spearman, 4),
        "context_generated_normal_score_corr": sig(corr(normal_scores(ctx), normal_scores(gen)), 4),
        "gap_model": {
            "description": "normal scores of the gaps: z_t = sqrt(weight) s_t + sqrt(1 - weight) e_t, "
                           "s_t = phi s_(t-1) + sqrt(1 - phi^2) u_t; fitted to the autocorrelation, lags 1.."
                           f"{MAX_LAG}",
            "weight": sig(w, 4),
            "phi": sig(phi, 4),
            "normal_score_autocorr": {str(k): sig(acf[k - 1], 3) for k in (1, 2, 5, 10, 20, 50, 100)},
        },
    }
    args.out.write_text(json.dumps(stats, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): weight={w:.4f} phi={phi:.3f} "
          f"spearman(context, generated)={spearman:.4f}")


if __name__ == "__main__":
    main()
