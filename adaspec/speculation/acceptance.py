"""Acceptance model: how likely a draft token is to be accepted, from the draft's own confidence.

Vocabulary, fixed here for the whole package:
  c      the draft's confidence in a token it proposed: q(x), its probability before top-K truncation;
  a      P(the token is accepted | every earlier draft token of the step was): for a greedy request the token
         must be the target's argmax; for a sampled one it is accepted with probability min(1, p(x)/q(x)).
         The same c means different things in the two cases, so they are calibrated apart.
  P_j    the probability that the first j drafts of a step are all accepted: a_1·…·a_j.
  E      the expected tokens a step commits: 1 + Σ_j P_j.

What one verification tells: with n of k drafts accepted, drafts 1..n were accepted and draft n+1 (if
n < k) rejected, each given its predecessors; drafts after n+1 were never tested.

`AcceptanceCalibrator` maps c to a with `NUM_BINS` bins of decayed counts (accepted, tested), each with a
Beta prior centred on a typical acceptance (`PRIOR_ACCEPTANCE`, the same in every bin: raw confidence is a
poor starting guess, a small draft's softmax is flat: tokens it gives 0.15 were accepted 94 % of the time
here), made monotone in c (pool adjacent violators). Its counts are plain numbers, so replicas publish them in
their heartbeat and coordinators merge them into the global prior. `RequestAcceptance` adjusts it to one request: a request whose tokens
are easier or harder than the average shows it in a few steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

NUM_BINS = 10
PRIOR_TOKENS = 4.0  # strength of the prior in each bin, in tokens
PRIOR_ACCEPTANCE = 0.7  # the prior's acceptance before any outcome is seen
DECAY = 0.999  # per observed token: old outcomes fade, so the calibration follows the workload
REQUEST_PRIOR_TOKENS = 8.0  # how many of its own tokens a request needs before they count as much as the prior
MAX_ACCEPTANCE = 0.995


def _bin(c: float) -> int:
    return min(NUM_BINS - 1, max(0, int(c * NUM_BINS)))


def _centre(i: int) -> float:
    return (i + 0.5) / NUM_BINS


def scale_odds(p: float, ratio: float) -> float:
    """`p` with its odds multiplied by `ratio` (a per-request adjustment that stays within (0, 1))."""
    return p * ratio / (1.0 - p + p * ratio) if 0.0 < p < 1.0 else p


@dataclass(frozen=True)
class AcceptanceCurve:
    """c -> a, linear between the bin centres (flat beyond the first and last): what a drafter applies."""

    knots: tuple[float, ...]  # [NUM_BINS] acceptance at each bin centre

    def __call__(self, c: float) -> float:
        x = min(max(c * NUM_BINS - 0.5, 0.0), NUM_BINS - 1.0)
        i = min(int(x), NUM_BINS - 2)
        return self.knots[i] + (x - i) * (self.knots[i + 1] - self.knots[i])

    def scaled(self, ratio: float) -> AcceptanceCurve:
        return AcceptanceCurve(tuple(scale_odds(k, ratio) for k in self.knots))

    def rounded(self, digits: int = 2) -> AcceptanceCurve:
        """Rounded knots: a curve sent to a drafter only changes when it changes by this much."""
        return AcceptanceCurve(tuple(round(k, digits) for k in self.knots))


RAW = AcceptanceCurve(tuple(_centre(i) for i in range(NUM_BINS)))  # a = c: the reference system's assumption


def _monotone(values: list[float], weights: list[float]) -> list[float]:
    """Pool adjacent violators: the weighted least-squares non-decreasing fit of `values`."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(n)]


def observed_outcomes(confidences: Sequence[float], num_accepted: int) -> list[tuple[float, bool]]:
    """(confidence, accepted) for the drafts one verification tested (see the module docstring)."""
    tested = confidences[: num_accepted + 1]
    return [(c, j < num_accepted) for j, c in enumerate(tested)]


@dataclass
class _Counts:
    accepted: list[float] = field(default_factory=lambda: [0.0] * NUM_BINS)
    tested: list[float] = field(default_factory=lambda: [0.0] * NUM_BINS)


class AcceptanceCalibrator:
    """Online calibration of c -> a, greedy and sampled apart (see the module docstring)."""

    MODES = ("greedy", "sampled")

    def __init__(self, decay: float = DECAY, prior_tokens: float = PRIOR_TOKENS):
        self.decay, self.prior_tokens = decay, prior_tokens
        self.counts = {mode: _Counts() for mode in self.MODES}
        self._curves: dict[str, AcceptanceCurve] = {}

    def observe(self, confidences: Sequence[float], num_accepted: int, greedy: bool) -> None:
        counts = self.counts["greedy" if greedy else "sampled"]
        for c, accepted in observed_outcomes(confidences, num_accepted):
            for i in range(NUM_BINS):
                counts.accepted[i] *= self.decay
                counts.tested[i] *= self.decay
            i = _bin(c)
            counts.tested[i] += 1.0
            counts.accepted[i] += accepted
        self._curves.pop("greedy" if greedy else "sampled", None)

    def curve(self, greedy: bool) -> AcceptanceCurve:
        mode = "greedy" if greedy else "sampled"
        if mode not in self._curves:
            counts, s = self.counts[mode], self.prior_tokens
            estimates = [(counts.accepted[i] + s * PRIOR_ACCEPTANCE) / (counts.tested[i] + s) for i in range(NUM_BINS)]
            weights = [counts.tested[i] + s for i in range(NUM_BINS)]
            self._curves[mode] = AcceptanceCurve(tuple(min(MAX_ACCEPTANCE, a) for a in _monotone(estimates, weights)))
        return self._curves[mode]

    def mean_acceptance(self, greedy: bool, default: float = PRIOR_ACCEPTANCE) -> float:
        """The acceptance of a draft token before its confidence is known: observed accepted / tested."""
        counts = self.counts["greedy" if greedy else "sampled"]
        tested = sum(counts.tested)
        return (sum(counts.accepted) + self.prior_tokens * default) / (tested + self.prior_tokens)

    # ---- sharing: replicas publish their counts, coordinators merge them --------------------------

    def to_list(self) -> list[float]:
        """The counts as one flat list: accepted and tested per bin, greedy then sampled."""
        return [v for mode in self.MODES for v in (*self.counts[mode].accepted, *self.counts[mode].tested)]

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[float]]) -> AcceptanceCalibrator:
        """One calibrator holding the summed counts of several (e.g. every verify replica's heartbeat)."""
        merged = cls()
        for values in lists:
            if len(values) != 4 * NUM_BINS:
                continue  # a replica of another version: its counts do not line up
            for m, mode in enumerate(cls.MODES):
                base = 2 * NUM_BINS * m
                for i in range(NUM_BINS):
                    merged.counts[mode].accepted[i] += values[base + i]
                    merged.counts[mode].tested[i] += values[base + NUM_BINS + i]
        return merged


@dataclass
class RequestAcceptance:
    """One request's acceptance so far, against what the calibrated model expected of it."""

    accepted: float = 0.0  # drafts accepted
    tested: float = 0.0  # drafts tested (accepted + rejected)
    expected: float = 0.0  # the calibrated model's expected accepts for the tested drafts
    last_drafted: int = 0  # the previous step's drafts and accepts (what the heuristics read)
    last_accepted: int = 0
    steps: int = 0

    def observe(self, confidences: Sequence[float], num_accepted: int, curve: AcceptanceCurve) -> None:
        for c, accepted in observed_outcomes(confidences, num_accepted):
            self.tested += 1
            self.accepted += accepted
            self.expected += curve(c)
        self.last_drafted, self.last_accepted = len(confidences), num_accepted
        self.steps += 1

    def odds_ratio(self) -> float:
        """How much easier (> 1) or harder (< 1) this request's drafts are than the calibration says, shrunk
        toward 1 by the prior."""
        m = REQUEST_PRIOR_TOKENS
        return (self.accepted + m / 2) / max(self.tested - self.accepted + m / 2, 1e-9) * \
            (self.tested - self.expected + m / 2) / (self.expected + m / 2)

    def rate(self, prior: float) -> float:
        """Expected acceptance of this request's next draft before its confidence is known: its own rate shrunk
        toward `prior` (the global mean)."""
        m = REQUEST_PRIOR_TOKENS
        return min(MAX_ACCEPTANCE, (self.accepted + m * prior) / (self.tested + m))

    def curve(self, calibrated: AcceptanceCurve) -> AcceptanceCurve:
        """The calibration adjusted to this request."""
        return calibrated.scaled(self.odds_ratio())


def expected_calibration_error(probs: Sequence[float], outcomes: Sequence[bool], bins: int = 10) -> float:
    """ECE: the mean |predicted − observed| over equal-width probability bins, weighted by their counts."""
    if not probs:
        return math.nan
    total = 0.0
    for b in range(bins):
        idx = [i for i, p in enumerate(probs) if min(bins - 1, int(p * bins)) == b]
        if idx:
            total += abs(sum(probs[i] for i in idx) - sum(outcomes[i] for i in idx))
    return total / len(probs)


def brier_score(probs: Sequence[float], outcomes: Sequence[bool]) -> float:
    return sum((p - o) ** 2 for p, o in zip(probs, outcomes)) / len(probs) if probs else math.nan
