"""The part of PromQL the AdaSpec dashboard's queries use, evaluated over scrapes taken by the caller.

`render_dashboard.py` scrapes every service over a real run and evaluates each panel's own query here, as
Prometheus would over the same samples: instant selectors, `rate` and `increase` over a range
(`$__rate_interval`, `$__range`), `sum` / `max` with or without `by (...)`, `histogram_quantile` (linear within
the bucket, as Prometheus interpolates) and `/` between vectors of the same labels. Simplified where the
scrapes allow it: `rate` is the increase between the first and last sample of the window over their distance
(no extrapolation to the window's edges), and a series that appears during the run counts from 0 before its
first sample (a counter or histogram is born at 0 when its first event happens).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

Labels = frozenset  # of (name, value) pairs
Vector = dict  # Labels -> float
TOKEN = re.compile(r"\s*(\$__\w+|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|[(),\[\]/])")


@dataclass
class Scrapes:
    """Samples over time: `times[i]` (seconds) and `samples[i]`, {(sample name, Labels): value} at that time."""
    times: list[float]
    samples: list[dict[tuple[str, Labels], float]]
    rate_interval_s: float

    def series(self, name: str) -> dict[Labels, list[float]]:
        """Every series of `name`, one value per scrape (0 before its first sample, NaN for a gauge then)."""
        found: dict[Labels, list[float]] = {}
        for i, samples in enumerate(self.samples):
            for (sample, labels), value in samples.items():
                if sample == name:
                    found.setdefault(labels, [math.nan] * len(self.times))[i] = value
        for values in found.values():
            first = next(i for i, v in enumerate(values) if not math.isnan(v))
            born = 0.0 if name.endswith(("_total", "_count", "_sum", "_bucket")) else math.nan
            values[:first] = [born] * first
        return found


def evaluate(query: str, scrapes: Scrapes, at: int) -> Vector:
    """`query`'s value at scrape `at` (an index into `scrapes.times`)."""
    tokens = TOKEN.findall(query)
    if "".join(tokens) != re.sub(r"\s+", "", query):
        raise ValueError(f"cannot read {query!r}")
    parser = _Parser(tokens, scrapes, at)
    value = parser.expression()
    if parser.position != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.position]!r} in {query!r}")
    return value


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, tokens: list[str], scrapes: Scrapes, at: int):
        self.tokens, self.scrapes, self.at, self.position = tokens, scrapes, at, 0

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.position]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, found {token!r}")
        self.position += 1
        return token

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def expression(self) -> Vector:
        left = self.term()
        while self.peek() == "/":
            self.take()
            right = self.term()
            left = {labels: (v / right[labels] if right[labels] else math.nan)
                    for labels, v in left.items() if labels in right}
        return left

    def term(self) -> Vector:
        name = self.take()
        if name in ("sum", "max"):
            by = self.labels() if self.peek() == "by" else None
            self.take("(")
            inner = self.expression()
            self.take(")")
            return _aggregate(inner, by, sum if name == "sum" else max)
        if name in ("rate", "increase"):
            self.take("(")
            selector, window = self.take(), self.window()
            self.take(")")
            return self.over_window(selector, window, per_second=name == "rate")
        if name == "histogram_quantile":
            self.take("(")
            quantile = float(self.take())
            self.take(",")
            buckets = self.expression()
            self.take(")")
            return _histogram_quantile(quantile, buckets)
        return {labels: values[self.at] for labels, values in self.scrapes.series(name).items()
                if not math.isnan(values[self.at])}

    def labels(self) -> list[str]:
        self.take("by")
        self.take("(")
        names = [self.take()]
        while self.peek() == ",":
            self.take()
            names.append(self.take())
        self.take(")")
        return names

    def window(self) -> str:
        self.take("[")
        variable = self.take()
        self.take("]")
        return variable

    def over_window(self, name: str, window: str, per_second: bool) -> Vector:
        times = self.scrapes.times
        if window == "$__range":
            first = 0
        elif window == "$__rate_interval":
            first = next(i for i, t in enumerate(times) if t >= times[self.at] - self.scrapes.rate_interval_s)
        else:
            raise ValueError(f"unknown range {window}")
        if first == self.at:
            return {}
        span_s = times[self.at] - times[first]
        return {labels: (values[self.at] - values[first]) / (span_s if per_second else 1.0)
                for labels, values in self.scrapes.series(name).items()}


def _aggregate(vector: Vector, by: list[str] | None, combine) -> Vector:
    groups: dict[Labels, list[float]] = defaultdict(list)
    for labels, value in vector.items():
        groups[Labels((k, v) for k, v in labels if by is not None and k in by)].append(value)
    return {labels: combine(values) for labels, values in groups.items()}


def _histogram_quantile(quantile: float, buckets: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, count in buckets.items():
        le = dict(labels)["le"]
        groups[Labels((k, v) for k, v in labels if k != "le")].append((float(le), count))
    result = {}
    for labels, cumulative in groups.items():
        cumulative.sort()
        total = cumulative[-1][1]
        if total <= 0:
            continue
        rank, lower, below = quantile * total, 0.0, 0.0
        for upper, count in cumulative:
            if count >= rank:
                if math.isinf(upper):  # Prometheus answers the highest finite bound
                    result[labels] = lower
                else:
                    result[labels] = lower + (upper - lower) * (rank - below) / (count - below or 1)
                break
            lower, below = upper, count
    return result
