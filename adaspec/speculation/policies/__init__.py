"""Speculation policies, one file per rule; `make_policy` parses a policy string.

| policy | whose rule |
| --- | --- |
| `none`, `fixed:K` | everyone |
| `threshold:C` | HF assisted generation's confidence threshold |
| `hf-heuristic` | HF assisted generation's `num_assistant_tokens_schedule="heuristic"` |
| `batch-schedule` | vLLM Dynamic SD, TensorRT-LLM `draft_len_schedule` |
| `ema` | SGLang `--speculative-adaptive` |
| `goodput` | SmartSpec / TurboSpec |
| `adaspec-paper` | the AdaSpec paper's released code |
| `adaspec` | this product: per request, per step, calibrated, load- and SLO-aware |
"""

from __future__ import annotations

from adaspec.speculation.policies.adaspec import AdaSpec
from adaspec.speculation.policies.adaspec_paper import PaperGoodput
from adaspec.speculation.policies.base import Policy
from adaspec.speculation.policies.batch_schedule import BatchSchedule
from adaspec.speculation.policies.ema import EmaTiers
from adaspec.speculation.policies.goodput import GlobalGoodput
from adaspec.speculation.policies.hf_heuristic import HfHeuristic
from adaspec.speculation.policies.static import FixedLength, NoSpeculation
from adaspec.speculation.policies.threshold import ConfidenceThreshold

DEFAULT_POLICY = "adaspec"
PLAIN_POLICIES = {"none": NoSpeculation, "hf-heuristic": HfHeuristic, "batch-schedule": BatchSchedule,
                  "ema": EmaTiers, "goodput": GlobalGoodput, "adaspec-paper": PaperGoodput, "adaspec": AdaSpec}
POLICY_NAMES = ["none", "fixed:K", "threshold:C", *list(PLAIN_POLICIES)[1:]]


def make_policy(spec: str | Policy, max_spec_len: int) -> Policy:
    """A new policy from its string (see the table above); a Policy instance passes through. Raises ValueError
    naming the expected forms."""
    if isinstance(spec, Policy):
        return spec
    name, colon, arg = str(spec).strip().partition(":")
    if name in PLAIN_POLICIES and not colon:
        return PLAIN_POLICIES[name]()
    if name == "fixed":
        try:
            k = int(arg)
        except ValueError:
            k = -1
        if not 0 <= k <= max_spec_len:
            raise ValueError(f"policy 'fixed:K' needs an integer K in [0, {max_spec_len}], got {spec!r}")
        return FixedLength(k)
    if name == "threshold":
        try:
            c = float(arg)
        except ValueError:
            c = -1.0
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"policy 'threshold:C' needs a confidence C in [0, 1], got {spec!r}")
        return ConfidenceThreshold(c)
    raise ValueError(f"unknown policy {str(spec)[:64]!r}; expected one of {', '.join(POLICY_NAMES)}")


__all__ = ["DEFAULT_POLICY", "POLICY_NAMES", "Policy", "make_policy"]
