"""What `adaspec`'s plan costs the coordinator per step, by batch size (and against an earlier commit's plan).

    python benchmarks/bench_plan.py --profile latency-profile.json                     # results/plan.{json,png}
    python benchmarks/bench_plan.py --profile latency-profile.json --baseline e594a0a  # and that commit's plan

A coordinator plans every request of its own on a verify replica together, once per step of that replica, on its
event loop (`services/coordinator/speculation.py`): at a GPU's batch sizes the plan must cost well under a step.
Timed here: `efficiency.plan` for n requests in random states (acceptance 0.5-0.9, paces around their 40 ms SLO),
with a cheap draft hop (1 ms beyond the draft forwards) and a costly one (15 ms: at small batches the plan then drafts
nothing, after trying and dropping every request at the first depth). With `--baseline REV`, the same calls on that
commit's `efficiency.py` and `latency_profile.py` (read with `git show`), interleaved round by round, and every plan
checked identical to the current one (a faster plan must decide the same). Median over rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from adaspec.speculation import efficiency
from adaspec.speculation.acceptance import AcceptanceCalibrator
from adaspec.speculation.latency_profile import LatencyModel, LatencyProfile
from adaspec.speculation.step_state import SLO_MARGIN, RequestState, StepContext, StepLoad

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "results"
SITUATIONS = {"draft hop 1 ms": 1.0, "draft hop 15 ms": 15.0}  # a drafting step's mean cost beyond its forwards


def load_baseline(rev: str):
    """(plan, LatencyModel) as they were at `rev`."""
    modules = []
    with tempfile.TemporaryDirectory(prefix="adaspec-plan-baseline-") as folder:
        for name in ("latency_profile", "efficiency"):
            source = subprocess.run(["git", "show", f"{rev}:adaspec/speculation/{name}.py"], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout
            path = Path(folder) / f"baseline_{name}.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            modules.append(module)
    return modules[1].plan, modules[0].LatencyModel


def situation(rng: random.Random, n: int, draft_hop_ms: float, profile: LatencyProfile, model=LatencyModel):
    """The arguments of one plan: n requests on a replica whose batch they are."""
    requests = [RequestState(context_tokens=rng.randint(64, 512), output_tokens=20,
                             remaining_tokens=rng.randint(5, 100), greedy=True,
                             since_first_token_s=19 * rng.uniform(0.015, 0.035), tpot_slo_s=0.04) for _ in range(n)]
    load = StepLoad(batch=n, context=statistics.fmean(r.context_tokens for r in requests), overhead_ms=8.0,
                    draft_overhead_ms=draft_hop_ms, draft_overhead_tail_ms=2 * draft_hop_ms, split_phases=True)
    ctx = StepContext(load, model(profile.verify.coef), model(profile.draft.coef), AcceptanceCalibrator(), 8)
    curves = [efficiency.geometric_curve(rng.uniform(0.5, 0.9), 8) for _ in requests]
    return (ctx, curves, [efficiency.slo_weight(r.pace()) for r in requests],
            [r.allowed_token_ms(SLO_MARGIN) for r in requests], [min(8, r.remaining_tokens - 1) for r in requests]), {
        "switch_margin": 0.05, "draft_lags": [0] * n, "tokens_left": [r.remaining_tokens for r in requests]}


def time_plan(plan, args, kwargs, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        plan(*args, **kwargs)
    return (time.perf_counter() - start) / calls * 1e3


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, name in enumerate(SITUATIONS):
        mine = [r for r in rows if r["situation"] == name]
        ax.plot([r["batch"] for r in mine], [r["plan_ms"] for r in mine], "o-", color=f"C{i}", label=name)
        if any("baseline_ms" in r for r in mine):
            ax.plot([r["batch"] for r in mine], [r["baseline_ms"] for r in mine], "s--", color=f"C{i}",
                    label=f"{name}, baseline")
    ax.set(xscale="log", yscale="log", xlabel="requests planned together", ylabel="ms per plan",
           title="adaspec's plan, one coordinator step of a replica")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="latency profile (`adaspec profile`)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256])
    parser.add_argument("--baseline", help="a git revision whose plan to time beside the current one")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "plan.json")
    args = parser.parse_args()
    profile = LatencyProfile.load(args.profile)
    baseline = load_baseline(args.baseline) if args.baseline else None
    rows = []
    for name, hop_ms in tqdm(SITUATIONS.items(), desc="situations"):
        for n in args.batches:
            plan_args, kwargs = situation(random.Random(n), n, hop_ms, profile)
            calls = max(5, 2000 // n)
            current, before = [], []
            if baseline is not None:
                old_args, _ = situation(random.Random(n), n, hop_ms, profile, model=baseline[1])
                assert vars(baseline[0](*old_args, **kwargs)) == vars(efficiency.plan(*plan_args, **kwargs)), \
                    f"the plan of {n} requests ({name}) differs from the baseline's"
            for _ in range(args.rounds):
                current.append(time_plan(efficiency.plan, plan_args, kwargs, calls))
                if baseline is not None:
                    before.append(time_plan(baseline[0], old_args, kwargs, calls))
            ks = efficiency.plan(*plan_args, **kwargs).ks
            row = {"situation": name, "batch": n, "mean_k": sum(ks) / n, "plan_ms": statistics.median(current)}
            if baseline is not None:
                ratios = [c / b for c, b in zip(current, before)]
                row |= {"baseline_ms": statistics.median(before), "ratio": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios)}
            rows.append(row)
    print(f"\n{'situation':<16} {'batch':>5} {'mean k':>6} {'ms per plan':>11}"
          + (f" {'baseline ms':>11} {'current / baseline (min-max)':>30}" if baseline else ""))
    for r in rows:
        line = f"{r['situation']:<16} {r['batch']:5d} {r['mean_k']:6.2f} {r['plan_ms']:11.3f}"
        if baseline is not None:
            line += f" {r['baseline_ms']:11.3f} {r['ratio']:>17.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": args.profile, "baseline": args.baseline, "rounds": args.rounds,
                                    "rows": rows}, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
