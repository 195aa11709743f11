"""What `adaspec bench` writes: the results as JSON, the tables as Markdown beside it, and the plot beside both.

The JSON is strict (no NaN or Infinity): an infinite request rate is written `"inf"`, as vLLM writes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adaspec.bench.plot import plot_rows
from adaspec.workload import format_table

COLUMNS = [
    ("policy", "policy"), ("rate", "rate (req/s)", "g"), ("requests", "requests"), ("failed", "failed"),
    ("request_throughput", "req/s", ".2f"), ("output_tok_s", "out tok/s", ".1f"),
    ("mean_ttft_ms", "mean TTFT ms", ".0f"), ("p99_ttft_ms", "p99 TTFT ms", ".0f"),
    ("mean_tpot_ms", "mean TPOT ms", ".1f"), ("p99_tpot_ms", "p99 TPOT ms", ".1f"),
    ("slo_attainment", "SLO met", ".0%"), ("goodput", "goodput (req/s)", ".2f"), ("mean_k", "mean k", ".2f"),
    ("acceptance_rate", "acceptance", ".2f"),
]
SPREAD_COLUMNS = [("mean_tpot_range", "mean TPOT ms, rounds min-max"), ("slo_range", "SLO met, rounds min-max")]
CLASS_COLUMNS = [
    ("policy", "policy"), ("rate", "rate (req/s)", "g"), ("class", "class"), ("slo", "SLO TTFT / TPOT ms"),
    ("requests", "requests"), ("failed", "failed"), ("slo_attainment", "SLO met", ".0%"),
    ("mean_tpot_ms", "mean TPOT ms", ".1f"), ("p99_tpot_ms", "p99 TPOT ms", ".1f"),
    ("goodput", "goodput (req/s)", ".2f"),
]


def _range(row: dict, key: str, fmt: str) -> str | None:
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    return None if low is None else f"{low:{fmt}}-{high:{fmt}}"


def _limit(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:g}"


def _ratio(row: dict) -> str | None:
    """The mean TPOT's ratio to the baseline's, per round: its median, and its range with several rounds."""
    ratio = row.get("mean_tpot_vs_baseline")
    if ratio is None:
        return None
    spread = _range(row, "mean_tpot_vs_baseline", ".2f")
    return f"{ratio:.2f}" + (f" ({spread})" if spread else "")


def markdown_tables(results: dict) -> str:
    """The rows as a Markdown table (with the spread over rounds when there are several, and the ratio to the
    baseline policy when there is one and another policy), then the per-class table when SLO classes were used."""
    rows = results["rows"]
    columns = list(COLUMNS)
    if any("mean_tpot_ms_min" in row for row in rows):
        columns += SPREAD_COLUMNS
        rows = [{**row, "mean_tpot_range": _range(row, "mean_tpot_ms", ".1f"),
                 "slo_range": _range(row, "slo_attainment", ".0%")} for row in rows]
    baseline = results.get("config", {}).get("baseline") or "baseline"
    if len({row["policy"] for row in rows}) > 1 and any("mean_tpot_vs_baseline" in row for row in rows):
        columns.append(("tpot_ratio", f"mean TPOT vs {baseline}, per round"))
        rows = [{**row, "tpot_ratio": _ratio(row)} for row in rows]
    parts = [format_table(rows, columns, markdown=True)]
    class_rows = [{"policy": row["policy"], "rate": row["rate"], "class": name,
                   "slo": f"{_limit(figures['slo_ttft_ms'])} / {_limit(figures['slo_tpot_ms'])}", **figures}
                  for row in results["rows"] for name, figures in row.get("classes", {}).items()]
    if class_rows:
        parts.append(format_table(class_rows, CLASS_COLUMNS, markdown=True))
    return "\n\n".join(parts) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(results: dict, output_json: str | Path) -> list[Path]:
    """Write `output_json`, and beside it the Markdown tables (`.md`, headed by the workload) and the plot
    (`.png`); returns the three paths."""
    path = Path(output_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n")
    md = path.with_suffix(".md")
    md.write_text(f"Workload: {results['workload']}\n\n{markdown_tables(results)}")
    png = path.with_suffix(".png")
    plot_rows(results["rows"], png, title=results["workload"])
    return [path, md, png]
