"""Summaries of a replay: throughput, TTFT/TPOT percentiles, SLO attainment, mean k, acceptance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def _pct_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000.0 if values else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else float(seconds) * 1000.0


def meets_slo(ttft_ms: float | None, tpot_ms: float | None, slo_ttft_ms: float | None, slo_tpot_ms: float | None,
              e2el_ms: float | None = None, slo_e2el_ms: float | None = None) -> bool:
    """Whether one completed request meets an SLO; a limit of None is not checked. A request without a TTFT or
    an end-to-end latency (no token came) misses that limit; one without a TPOT (fewer than 2 tokens) meets the
    TPOT limit, as the coordinator's `slo_met` has it and as vLLM's goodput counts such a TPOT as 0."""
    if slo_ttft_ms is not None and (ttft_ms is None or ttft_ms > slo_ttft_ms):
        return False
    if slo_tpot_ms is not None and tpot_ms is not None and tpot_ms > slo_tpot_ms:
        return False
    return slo_e2el_ms is None or (e2el_ms is not None and e2el_ms <= slo_e2el_ms)


def summarize(results: Iterable[Mapping[str, Any]], wall_s: float, slo_ttft_ms: float,
              slo_tpot_ms: float) -> dict:
    """One replay's summary. Each result is a dict with `ok`, `error`, `output_tokens`,
    `ttft_s`, `tpot_s` (None under 2 tokens), `draft_tokens`, `accepted_tokens`, `mean_k`.

    - `output_tok_s`: output tokens of the completed requests / `wall_s`.
    - TTFT and TPOT percentiles (ms, numpy's linear interpolation) over the completed requests that have a value.
    - `slo_attainment`: completed requests with TTFT <= `slo_ttft_ms` and TPOT <= `slo_tpot_ms` (a request
      without a TPOT, under 2 tokens, meets the TPOT half; one without a TTFT misses) over all requests,
      so a failed request counts as a miss.
    - `mean_k`: mean over completed requests of their `mean_k`; `acceptance_rate`: accepted / drafted tokens
      summed over completed requests (token-weighted). None where there is nothing to average.
    - `errors`: error message -> count for the failed requests.
    """
    results = list(results)
    done = [r for r in results if r.get("ok")]
    ttfts = [float(r.get("ttft_s")) for r in done if r.get("ttft_s") is not None]
    tpots = [float(r.get("tpot_s")) for r in done if r.get("tpot_s") is not None]
    out_tokens = sum(int(r.get("output_tokens") or 0) for r in done)
    met = sum(meets_slo(_ms(r.get("ttft_s")), _ms(r.get("tpot_s")), slo_ttft_ms, slo_tpot_ms) for r in done)
    ks = [float(r.get("mean_k")) for r in done if r.get("mean_k") is not None]
    drafted = sum(int(r.get("draft_tokens") or 0) for r in done)
    accepted = sum(int(r.get("accepted_tokens") or 0) for r in done)
    errors = Counter(str(r.get("error") or "unknown error") for r in results if not r.get("ok"))
    return {
        "requests": len(results),
        "completed": len(done),
        "failed": len(results) - len(done),
        "wall_s": float(wall_s),
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / wall_s if wall_s > 0 else None,
        "ttft_p50_ms": _pct_ms(ttfts, 50),
        "ttft_p99_ms": _pct_ms(ttfts, 99),
        "tpot_p50_ms": _pct_ms(tpots, 50),
        "tpot_p99_ms": _pct_ms(tpots, 99),
        "slo_ttft_ms": slo_ttft_ms,
        "slo_tpot_ms": slo_tpot_ms,
        "slo_attainment": met / len(results) if results else None,
        "mean_k": float(np.mean(ks)) if ks else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "errors": dict(errors.most_common()),
    }


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt:
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple], markdown: bool = False) -> str:
    """An aligned text table, or with `markdown` a Markdown (GFM) one. A column is a key, `(key, header)` or
    `(key, header, format_spec)`; numbers are right-aligned, text left-aligned, a missing or None value shows
    as `-`."""
    cols = []
    for c in columns:
        key, header, fmt = (c, c, None) if isinstance(c, str) else (tuple(c) + (None, None))[:3]
        cols.append((key, header if header is not None else key, fmt))
    cells = [[_cell(row.get(key), fmt) for key, _, fmt in cols] for row in rows]
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) is None for row in rows)
               for key, _, _ in cols]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (_, h, _) in enumerate(cols)]

    if markdown:
        widths = [max(w, 3) for w in widths]  # room for the `--:` alignment rule

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = f"| {' | '.join('-' * (w - 1) + ':' if num else '-' * w for w, num in zip(widths, numeric))} |"
    else:
        rule = "  ".join("-" * w for w in widths)
    out = [line([h for _, h, _ in cols]), rule]
    out += [line(r) for r in cells]
    return "\n".join(out)
