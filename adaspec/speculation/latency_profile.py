"""Latency profile: how long a forward takes on this hardware, as a function of its shape.

One forward of `b` sequences carrying `n` query tokens in total, over a mean context of `c` tokens, costs

    t(b, n, c) = w0 + w1·b + w2·n + w3·b·c/1000 + w4·n·c/1000     [ms]

  w0  reading the weights and launching every layer: paid once per forward whatever its size;
  w1  per-sequence work (block tables, sampling);
  w2  per-token work (the linear layers);
  w3  reading each sequence's cached context (the paged-attention gather: once per sequence);
  w4  attention scores: each query token against its sequence's whole context.

The coefficients are fitted (non-negative least squares) to forwards measured on the machine
(`adaspec profile`), and refined online from every step a replica runs. A step of several forwards
(drafting k tokens takes k forwards) is the sum of their features, so one model covers both.
t_v is the target model's forward (verification), t_d the draft model's (one token per sequence).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NUM_FEATURES = 5
CONTEXT_UNIT = 1000.0  # w3 and w4 are per thousand context tokens
MIN_FORWARD_MS = 1e-3


def forward_features(batch: int, tokens: int, context: float) -> tuple[float, ...]:
    """The features of one forward: (1, b, n, b·c/1000, n·c/1000)."""
    return (1.0, float(batch), float(tokens), batch * context / CONTEXT_UNIT, tokens * context / CONTEXT_UNIT)


def step_features(forwards: Iterable[tuple[int, int, float]]) -> tuple[float, ...]:
    """The features of a step of several forwards, each (batch, tokens, context): their sum."""
    total = [0.0] * NUM_FEATURES
    for forward in forwards:
        for i, x in enumerate(forward_features(*forward)):
            total[i] += x
    return tuple(total)


@dataclass(frozen=True)
class Sample:
    """One measured step: its features and how long it took."""

    x: tuple[float, ...]
    ms: float

    @classmethod
    def forward(cls, batch: int, tokens: int, context: float, ms: float) -> Sample:
        return cls(forward_features(batch, tokens, context), ms)

    def to_list(self) -> list[float]:
        return [*self.x, self.ms]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> Sample:
        return cls(tuple(float(v) for v in values[:NUM_FEATURES]), float(values[NUM_FEATURES]))


@dataclass(frozen=True)
class LatencyModel:
    """t = w · features, with w >= 0 (see the module docstring)."""

    coef: tuple[float, ...] = (0.0,) * NUM_FEATURES

    def __post_init__(self):
        assert len(self.coef) == NUM_FEATURES, f"expected {NUM_FEATURES} coefficients, got {len(self.coef)}"

    def predict(self, batch: int, tokens: int, context: float) -> float:
        """ms for one forward of `batch` sequences, `tokens` query tokens in all, mean context `context`. Written out
        (the same sum as `predict_features` of `forward_features`): a plan of a replica's batch predicts a hundred
        forwards and more, on the coordinator's event loop, and building the features took most of its time."""
        w0, w1, w2, w3, w4 = self.coef
        return max(MIN_FORWARD_MS, w0 + w1 * batch + w2 * tokens + w3 * (batch * context / CONTEXT_UNIT)
                   + w4 * (tokens * context / CONTEXT_UNIT))

    def predict_features(self, x: Sequence[float]) -> float:
        return max(MIN_FORWARD_MS, sum(w * xi for w, xi in zip(self.coef, x)))

    def per_token_ms(self, context: float) -> float:
        """The cost of one more query token in a forward: dt/dn."""
        return self.coef[2] + self.coef[4] * context / CONTEXT_UNIT

    @classmethod
    def fit(cls, samples: Sequence[Sample], weights: Sequence[float] | None = None) -> LatencyModel:
        """Non-negative least squares on relative error (each sample weighted by 1/ms, so a 1 ms forward counts as
        much as a 100 ms one): an active-set loop that drops a feature whose coefficient comes out negative."""
        if not samples:
            raise ValueError("cannot fit a latency model to no samples")
        x = np.array([s.x for s in samples], dtype=float)
        y = np.array([s.ms for s in samples], dtype=float)
        w = np.array(weights if weights is not None else [1.0] * len(samples), dtype=float) / np.maximum(y, 1e-3)
        active = [i for i in range(NUM_FEATURES) if np.any(x[:, i] != x[0, i]) or i == 0]
        while True:
            coef = np.zeros(NUM_FEATURES)
            solution, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
            coef[active] = solution
            negative = [i for i in active if coef[i] < 0]
            if not negative:
                return cls(tuple(float(c) for c in coef))
            active.remove(min(negative, key=lambda i: coef[i]))
            if not active:
                return cls((float(np.median(y)),) + (0.0,) * (NUM_FEATURES - 1))


def prediction_error(model: LatencyModel, samples: Sequence[Sample]) -> tuple[float, float]:
    """(median, p90) absolute percentage error of `model` on `samples`."""
    errors = [abs(model.predict_features(s.x) - s.ms) / s.ms * 100 for s in samples if s.ms > 0]
    if not errors:
        return math.nan, math.nan
    return float(np.percentile(errors, 50)), float(np.percentile(errors, 90))


class OnlineLatencyModel:
    """A latency model refined from the steps a replica runs.

    The profiled samples anchor every dimension the live traffic may not exercise (a replica that has
    only seen batch 4 still knows batch 32); the last `window` observed steps, weighted `observed_weight`
    each, pull the fit toward what the machine does today (other tenants, thermal state, a different
    context mix). Refitted every `refit_every` observations; between refits, predictions are scaled by the
    recent ratio of observed to predicted time, so a sudden slowdown shows at once.
    """

    def __init__(self, profiled: Sequence[Sample], base: LatencyModel | None = None, window: int = 256,
                 refit_every: int = 32, observed_weight: float = 4.0, ratio_weight: float = 0.1):
        self.profiled = list(profiled)
        self.observed: deque[Sample] = deque(maxlen=window)
        self.refit_every, self.observed_weight, self.ratio_weight = refit_every, observed_weight, ratio_weight
        self.base = base or (LatencyModel.fit(self.profiled) if self.profiled else LatencyModel())
        self.ratio = 1.0  # EWMA of observed / predicted since the last refit
        self.count = 0

    @property
    def model(self) -> LatencyModel:
        """The current model: the last fit, scaled by the recent observed/predicted ratio."""
        return LatencyModel(tuple(c * self.ratio for c in self.base.coef))

    def observe(self, sample: Sample) -> None:
        predicted = self.base.predict_features(sample.x)
        self.ratio += self.ratio_weight * (sample.ms / predicted - self.ratio)
        self.ratio = min(max(self.ratio, 0.2), 5.0)
        self.observed.append(sample)
        self.count += 1
        if self.count % self.refit_every == 0:
            samples = self.profiled + list(self.observed)
            weights = [1.0] * len(self.profiled) + [self.observed_weight] * len(self.observed)
            self.base, self.ratio = LatencyModel.fit(samples, weights), 1.0


@dataclass
class LatencyProfile:
    """What `adaspec profile` writes: the measured forwards of both models, their fits, and where they ran."""

    verify: LatencyModel
    draft: LatencyModel | None = None
    verify_samples: list[Sample] = field(default_factory=list)
    draft_samples: list[Sample] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # device, models, dtype, date, held-out error

    @classmethod
    def from_samples(cls, verify_samples: list[Sample], draft_samples: list[Sample], meta: dict | None = None):
        return cls(LatencyModel.fit(verify_samples), LatencyModel.fit(draft_samples) if draft_samples else None,
                   verify_samples, draft_samples, dict(meta or {}))

    def to_dict(self) -> dict:
        return {
            "format": "adaspec-latency-profile/2",
            "model": f"t_ms = w0 + w1*batch + w2*tokens + w3*batch*context/{CONTEXT_UNIT:g} "
                     f"+ w4*tokens*context/{CONTEXT_UNIT:g}",
            "verify": {"coef": list(self.verify.coef), "samples": [s.to_list() for s in self.verify_samples]},
            "draft": None if self.draft is None else {"coef": list(self.draft.coef),
                                                      "samples": [s.to_list() for s in self.draft_samples]},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyProfile:
        if data.get("format") != "adaspec-latency-profile/2":
            raise ValueError(f"not an AdaSpec latency profile (format {data.get('format')!r})")
        draft = data.get("draft")
        return cls(
            verify=LatencyModel(tuple(data["verify"]["coef"])),
            draft=LatencyModel(tuple(draft["coef"])) if draft else None,
            verify_samples=[Sample.from_list(v) for v in data["verify"].get("samples", [])],
            draft_samples=[Sample.from_list(v) for v in (draft or {}).get("samples", [])],
            meta=data.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: cannot read the latency profile: {error}") from error
