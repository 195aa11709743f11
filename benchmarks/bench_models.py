"""How good the efficiency model's inputs are: acceptance calibration and latency prediction, on held-out runs.

    python benchmarks/bench_models.py --profile latency-profile.json     # writes results/models.{json,png}

Acceptance: the bundled pair drafts (`fixed:6`) on held-out source, greedy and sampled (T = 0.8) apart. The
calibration learns from the first half of the prompts; on the second half every tested draft is predicted
before its outcome is seen by the raw confidence (the reference system's assumption), the calibrated global
curve (frozen), and the curve adjusted to the request (its own outcomes so far). Reported: expected
calibration error (10 bins) and Brier score.

Latency: the engine runs the held-out prompts at batch 1, 4, 16 and 32 with `fixed:0`, `fixed:2` and `fixed:4`;
every step's verify forward and draft forwards are predicted by the profile as loaded (static) and by the
online model just before it sees the step. Reported: median and p90 absolute error, %.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from bench_engine import held_out_prompts
from tqdm import tqdm

from adaspec import Engine, SamplingParams
from adaspec.engine.step_planner import StepTimings
from adaspec.speculation.acceptance import (
    RAW,
    AcceptanceCalibrator,
    RequestAcceptance,
    brier_score,
    expected_calibration_error,
    observed_outcomes,
)
from adaspec.speculation.latency_profile import step_features

OUT_DIR = Path(__file__).resolve().parent / "results"


def acceptance_report(engine: Engine, prompts: list[list[int]], temperature: float) -> dict:
    """Predictions of raw, calibrated and per-request-calibrated acceptance for the held-out half's drafts."""
    half = len(prompts) // 2
    calibrator = AcceptanceCalibrator()
    params = SamplingParams(max_tokens=96, temperature=temperature, ignore_eos=True, seed=1)
    records: list[tuple[int, list[float], int]] = []  # (request, confidences tested, accepted)
    learn = engine.planner.learn

    def record(seqs, ctx, confidences, accepted, timings):
        for seq, tested, n in zip(seqs, confidences, accepted):
            if tested:
                records.append((seq.seq_id, list(tested), n))
        return learn(seqs, ctx, confidences, accepted, timings)

    engine.planner.learn = record
    try:
        engine.generate(prompts[:half], params, policy="fixed:6")
        for _, tested, n in records:
            calibrator.observe(tested, n, greedy=temperature == 0)
        records.clear()
        engine.generate(prompts[half:], params, policy="fixed:6")
    finally:
        engine.planner.learn = learn
    curve = calibrator.curve(greedy=temperature == 0)
    per_request: dict[int, RequestAcceptance] = {}
    raw, calibrated, adjusted, outcomes = [], [], [], []
    for seq_id, tested, n in records:
        state = per_request.setdefault(seq_id, RequestAcceptance())
        own = state.curve(curve)
        for c, accepted in observed_outcomes(tested, n):
            raw.append(RAW(c))
            calibrated.append(curve(c))
            adjusted.append(own(c))
            outcomes.append(accepted)
        state.observe(tested, n, curve)
    return {
        "drafts_tested": len(outcomes), "acceptance": sum(outcomes) / len(outcomes),
        **{f"{name}_{metric}": fn(pred, outcomes) for name, pred in
           (("raw", raw), ("calibrated", calibrated), ("per_request", adjusted))
           for metric, fn in (("ece", expected_calibration_error), ("brier", brier_score))},
        "reliability": reliability(raw, calibrated, outcomes),
    }


def reliability(raw: list[float], calibrated: list[float], outcomes: list[bool]) -> dict:
    """Per predicted-probability bin: mean prediction and observed acceptance, for the plot."""
    out = {}
    for name, pred in (("raw", raw), ("calibrated", calibrated)):
        bins = np.minimum((np.array(pred) * 10).astype(int), 9)
        out[name] = [(float(np.mean(np.array(pred)[bins == b])), float(np.mean(np.array(outcomes)[bins == b])),
                      int(np.sum(bins == b))) for b in range(10) if np.any(bins == b)]
    return out


def latency_report(engine: Engine, prompts: list[list[int]]) -> dict:
    """Absolute % errors of the static profile and of the online model, per step, verify and draft apart."""
    static = {"verify": engine.planner.verify_latency.model, "draft": engine.planner.draft_latency.model}
    errors = {f"{kind}_{model}": [] for kind in ("verify", "draft") for model in ("static", "online")}
    learn = engine.planner.learn

    def record(seqs, ctx, confidences, accepted, timings: StepTimings):
        steps = [("verify", [timings.verify_forward] if timings.verify_forward else [], timings.verify_ms),
                 ("draft", timings.draft_forwards, timings.draft_ms)]
        for kind, forwards, ms in steps:
            if forwards and ms > 0:
                x = step_features(forwards)
                online = getattr(engine.planner, f"{kind}_latency").model
                errors[f"{kind}_static"].append(abs(static[kind].predict_features(x) - ms) / ms * 100)
                errors[f"{kind}_online"].append(abs(online.predict_features(x) - ms) / ms * 100)
        return learn(seqs, ctx, confidences, accepted, timings)

    engine.planner.learn = record
    try:
        runs = [(b, k) for b in (1, 4, 16, 32) for k in (0, 2, 4)]
        for batch, k in tqdm(runs, desc="latency", unit="run"):
            engine.generate(prompts[:batch], SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True),
                            policy=f"fixed:{k}")
    finally:
        engine.planner.learn = learn
    return {name: {"steps": len(e), "median_abs_pct": statistics.median(e), "p90_abs_pct": float(np.percentile(e, 90))}
            for name, e in errors.items() if e}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["acceptance"])
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4.5))
    for ax, mode in zip(np.atleast_1d(axes), modes):
        for name, style in (("raw", "o--"), ("calibrated", "s-")):
            points = results["acceptance"][mode]["reliability"][name]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(title=f"{mode}: predicted vs observed acceptance", xlabel="predicted", ylabel="observed",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="latency profile (`adaspec profile`); default: a quick one is measured")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as a replica runs)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "models.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(profile=args.profile, kv_cache_memory=256 * 2**20)
    if engine.planner.verify_latency is None:
        engine.planner.use_profile(engine.measure_profile())
    prompts = held_out_prompts(engine.tokenizer, args.prompts, 96)
    results = {"acceptance": {mode: acceptance_report(engine, prompts, t)
                              for mode, t in tqdm([("greedy", 0.0), ("sampled", 0.8)], desc="acceptance")},
               "latency": latency_report(engine, prompts), "profile": args.profile, "threads": args.threads}
    print("\nacceptance (held-out half)   tested   ECE raw  ECE cal  ECE req   Brier raw  Brier cal  Brier req")
    for mode, r in results["acceptance"].items():
        print(f"  {mode:<26} {r['drafts_tested']:7d}   {r['raw_ece']:.3f}    {r['calibrated_ece']:.3f}    "
              f"{r['per_request_ece']:.3f}     {r['raw_brier']:.3f}      {r['calibrated_brier']:.3f}      "
              f"{r['per_request_brier']:.3f}")
    print("\nlatency prediction (held-out steps)   steps   median abs %   p90 abs %")
    for name, r in results["latency"].items():
        print(f"  {name:<35} {r['steps']:6d}   {r['median_abs_pct']:12.1f}   {r['p90_abs_pct']:9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
