"""Service-level objectives in `adaspec bench`: SLO classes, their assignment to requests, vLLM's `--goodput`.

Every request carries an SLO (sent with it, so that SLO-aware policies can act on it, and checked by the bench
on the client's timings): `--slo-ttft-ms` / `--slo-tpot-ms` for all, or the SLO of the request's class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class SloClass:
    """A class of requests and its SLO. `ttft_ms` None: the bench's `--slo-ttft-ms` (or no TTFT limit);
    `fraction` None: an equal share of what the classes with a fraction leave."""

    name: str
    tpot_ms: float
    ttft_ms: float | None = None
    fraction: float | None = None


def _positive(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be > 0 and finite, got {text!r}")
    return value


def parse_slo_class(text: str) -> SloClass:
    """`NAME:TPOT_MS[:TTFT_MS[:FRACTION]]`, e.g. `chat:50:1000:0.7`; an empty TTFT_MS (`batch:200::0.3`) is
    left unset."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4 or not parts[0]:
        raise ValueError(f"an SLO class is NAME:TPOT_MS[:TTFT_MS[:FRACTION]], got {text!r}")
    name, tpot, ttft, fraction = (parts + [""] * 2)[:4]
    slo = SloClass(name, _positive(tpot, f"class {name}: TPOT_MS"),
                   _positive(ttft, f"class {name}: TTFT_MS") if ttft else None,
                   _positive(fraction, f"class {name}: FRACTION") if fraction else None)
    if slo.fraction is not None and slo.fraction > 1:
        raise ValueError(f"class {name}: FRACTION must be in (0, 1], got {fraction}")
    return slo


def class_fractions(classes: list[SloClass]) -> list[float]:
    """Each class's share of the requests: its `fraction`, or an equal share of the rest. Fractions must sum
    to 1 when every class has one, and to less than 1 otherwise."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"SLO class names must differ, got {names}")
    given = sum(c.fraction for c in classes if c.fraction is not None)
    rest = [c for c in classes if c.fraction is None]
    if not rest and not math.isclose(given, 1.0, abs_tol=1e-6):
        raise ValueError(f"SLO class fractions must sum to 1, got {given:g}")
    if rest and given >= 1.0:
        raise ValueError(f"SLO class fractions sum to {given:g}, leaving nothing for {[c.name for c in rest]}")
    share = (1.0 - given) / len(rest) if rest else 0.0
    return [c.fraction if c.fraction is not None else share for c in classes]


def assign_classes(classes: list[SloClass], num_requests: int, rng: np.random.Generator) -> list[SloClass]:
    """One class per request, drawn independently with the classes' fractions (same generator state, same
    assignment)."""
    fractions = np.asarray(class_fractions(classes))
    picks = rng.choice(len(classes), size=num_requests, p=fractions / fractions.sum())
    return [classes[i] for i in picks]


def parse_goodput(items: list[str]) -> dict[str, float]:
    """vLLM's `--goodput` arguments, `KEY:MS` with KEY in ttft, tpot, e2el -> {key: ms}."""
    slos: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in GOODPUT_METRICS:
            raise ValueError(f"--goodput takes KEY:MS with KEY one of {', '.join(GOODPUT_METRICS)}, got {item!r}")
        if key in slos:
            raise ValueError(f"--goodput: {key} given twice")
        slos[key] = _positive(value, f"--goodput {key}")
    return slos
