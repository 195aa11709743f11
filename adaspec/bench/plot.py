"""The bench's figure: mean TPOT, p99 TPOT, SLO attainment and goodput against request rate, a line per policy.

Rates sit at even steps on the x axis (labelled with their values), so that `inf` has a place and a sweep such
as 1 2 4 8 reads evenly. With several rounds a band shows the min-max over rounds where the rows carry one; with
SLO classes each class adds a line per policy in its own line style (solid: all requests).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from adaspec.bench.arrivals import rate_label

PANELS = [("mean_tpot_ms", "mean TPOT (ms)"), ("p99_tpot_ms", "p99 TPOT (ms)"),
          ("slo_attainment", "SLO attainment"), ("goodput", "goodput (req/s)")]
CLASS_STYLES = ["--", ":", "-.", (0, (5, 1, 1, 1))]


def _series(rows_by_rate: dict, rates: list[float], key: str, class_name: str | None = None) -> list[float]:
    """`key` of the row at each rate (of its class `class_name` when given); NaN where there is none."""
    out = []
    for rate in rates:
        row = rows_by_rate.get(rate) or {}
        if class_name is not None:
            row = row.get("classes", {}).get(class_name, {})
        value = row.get(key)
        out.append(math.nan if value is None else value)
    return out


def plot_rows(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Draw the four panels for `rows` (the bench's aggregated rows) into the PNG `path`."""
    rates = sorted({row["rate"] for row in rows})
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    classes = list(dict.fromkeys(name for row in rows for name in row.get("classes", {})))
    x = list(range(len(rates)))
    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        drawn = False
        palette = matplotlib.colormaps["tab20"]  # 20 distinct colours: the 10 of the default cycle repeat past 10
        for i, policy in enumerate(policies):
            color = "black" if policy == "adaspec" else palette(i % palette.N)
            mine = {row["rate"]: row for row in rows if row["policy"] == policy}
            ys = _series(mine, rates, key)
            drawn |= any(not math.isnan(y) for y in ys)
            ax.plot(x, ys, marker="o", color=color, label=policy, linewidth=2.5 if policy == "adaspec" else 1.5)
            if any(f"{key}_min" in row for row in mine.values()):
                ax.fill_between(x, _series(mine, rates, f"{key}_min"), _series(mine, rates, f"{key}_max"),
                                color=color, alpha=0.15, linewidth=0)
            for j, name in enumerate(classes):
                ax.plot(x, _series(mine, rates, key, name), marker=".", color=color,
                        linestyle=CLASS_STYLES[j % len(CLASS_STYLES)], label=f"{policy}, class {name}")
        if not drawn:
            ax.text(0.5, 0.5, "no SLO given" if key in ("slo_attainment", "goodput") else "no values",
                    ha="center", va="center", transform=ax.transAxes, color="gray")
        if key == "slo_attainment":
            ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(x, [rate_label(r) for r in rates])
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 130)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
