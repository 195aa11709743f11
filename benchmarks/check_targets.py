"""Check issue 12's targets on `adaspec bench` results: `adaspec` against every other policy, rate by rate.

    python benchmarks/check_targets.py bench-results/code/bench.json [--classes]

For each request rate, from the rows pooled over rounds (and each round's runs for the spread):
  - adaspec's mean TPOT over the best other policy's (target: <= 1.03), its SLO attainment and goodput against
    the best other (target: >=);
  - fixed:4's mean TPOT over adaspec's at the rate where fixed:4 is worst relative to the best static choice
    (target: >= 1.66), and adaspec's over the best static choice (none or the best fixed:K) at every rate
    (target: <= 1.03);
  - with --classes: the tight class's SLO attainment under adaspec against the best baseline's (target: >= 95 %
    wherever a baseline reaches 80 %).
A policy's second copy (`POLICY#TAG`, an A/A pair) is no other policy: it is left out of the comparisons, and each
rate's line gives the pair's ratio instead, round by round, as the noise floor the ratios above are read against.
Prints Markdown tables (what the docs carry).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from adaspec.bench.config import TAG, server_policy
from adaspec.bench.metrics import round_ratios


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    for group in ("rows", "runs"):
        for row in data[group]:
            row["rate"] = math.inf if row["rate"] == "inf" else float(row["rate"])
    return data


def spread(data: dict, policy: str, rate: float, key: str) -> str:
    values = [r[key] for r in data["runs"] if r["policy"] == policy and r["rate"] == rate and r[key] is not None]
    if len(values) < 2:
        return ""
    return f" ({min(values):.3g}–{max(values):.3g})"


def noise_floor(data: dict, copies: list[str], rate: float) -> str:
    """Each A/A copy's mean TPOT over its original's, per round: the median and the range."""
    parts = []
    for copy in copies:
        original = server_policy(copy)
        ratios = round_ratios(data["runs"], copy, original, rate)
        if ratios:
            parts.append(f"{copy} / {original} {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
    return "; ".join(parts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--classes", action="store_true", help="check the tight SLO class")
    args = parser.parse_args()
    data = load(args.results)
    rows = {(r["policy"], r["rate"]): r for r in data["rows"]}
    policies = list(dict.fromkeys(r["policy"] for r in data["rows"]))
    rates = sorted({r["rate"] for r in data["rows"]})
    copies = [p for p in policies if TAG in p]  # A/A pairs' second runs: the noise floor, not another policy
    policies = [p for p in policies if p not in copies]
    static = [p for p in policies if p == "none" or p.startswith("fixed:")]
    others = [p for p in policies if p != "adaspec"]

    print("| rate | adaspec TPOT ms | best other (TPOT) | ratio | adaspec SLO | best other SLO | adaspec goodput | "
          "best other goodput | best static (TPOT) | vs best static | A/A pair, per round |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
    worst_fixed4 = None
    for rate in rates:
        a = rows[("adaspec", rate)]
        best = min(others, key=lambda p: rows[(p, rate)]["mean_tpot_ms"] or math.inf)
        best_slo = max(rows[(p, rate)]["slo_attainment"] or 0 for p in others)
        best_goodput = max(rows[(p, rate)]["goodput"] or 0 for p in others)
        best_static = min(static, key=lambda p: rows[(p, rate)]["mean_tpot_ms"] or math.inf)
        t, t_best, t_static = (a["mean_tpot_ms"], rows[(best, rate)]["mean_tpot_ms"],
                               rows[(best_static, rate)]["mean_tpot_ms"])
        print(f"| {rate:g} | {t:.1f}{spread(data, 'adaspec', rate, 'mean_tpot_ms')} | {best} ({t_best:.1f}) | "
              f"{t / t_best:.3f} | {a['slo_attainment']:.0%} | {best_slo:.0%} | {a['goodput']:.2f} | "
              f"{best_goodput:.2f} | {best_static} ({t_static:.1f}) | {t / t_static:.3f} | "
              f"{noise_floor(data, copies, rate)} |")
        if ("fixed:4", rate) in rows:
            gap = rows[("fixed:4", rate)]["mean_tpot_ms"] / rows[(best_static, rate)]["mean_tpot_ms"]
            if worst_fixed4 is None or gap > worst_fixed4[0]:
                worst_fixed4 = (gap, rate)
    if worst_fixed4 is not None:
        rate = worst_fixed4[1]
        ratio = rows[("fixed:4", rate)]["mean_tpot_ms"] / rows[("adaspec", rate)]["mean_tpot_ms"]
        print(f"\nfixed:4 is worst (against the best static choice) at {rate:g} req/s: its mean TPOT over adaspec's is "
              f"{ratio:.2f}x (target >= 1.66x)")
    if args.classes:
        print("\n| rate | class | adaspec SLO met | best baseline SLO met (policy) |")
        print("| ---: | --- | ---: | --- |")
        for rate in rates:
            for name in rows[("adaspec", rate)].get("classes", {}):
                mine = rows[("adaspec", rate)]["classes"][name]["slo_attainment"]
                best = max(others, key=lambda p: rows[(p, rate)]["classes"][name]["slo_attainment"] or 0)
                theirs = rows[(best, rate)]["classes"][name]["slo_attainment"]
                print(f"| {rate:g} | {name} | {mine:.0%} | {theirs:.0%} ({best}) |")


if __name__ == "__main__":
    main()
