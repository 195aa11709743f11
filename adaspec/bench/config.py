"""What one `adaspec bench` measures: load, workload, sampling, policies, SLOs, repetition, backend.

`adaspec bench`'s options, but for the stack it may start and the output path, map onto these fields (the CLI
builds a `BenchConfig`; the tests build one directly). Checks that span fields run here, so that a bad
combination fails before any request is sent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from adaspec.bench.backend import BACKENDS
from adaspec.bench.datasets import DATASETS
from adaspec.bench.slo import GOODPUT_METRICS, SloClass, class_fractions

TAG = "#"  # POLICY#TAG: a policy under a name of its own, e.g. a second copy of one for an A/A pair


def server_policy(label: str) -> str:
    """The policy string sent to the server for a bench policy `label` (`POLICY` or `POLICY#TAG`)."""
    return label.partition(TAG)[0].strip()


@dataclass
class BenchConfig:
    policies: list[str]  # labels: POLICY (passed through to the server, which validates it) or POLICY#TAG
    request_rates: list[float] = field(default_factory=lambda: [math.inf])
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_requests: int = 100
    warmup_requests: int = 1
    seed: int = 0
    trace: str | None = None  # azure-code | azure-conv | a CSV path; None: gamma arrivals, fixed sizes
    input_len: int = 256  # without a trace
    output_len: int = 128
    max_prompt_tokens: int = 256  # with a trace
    max_output_tokens: int = 128
    min_output_tokens: int = 16
    dataset: str = "code"
    trace_start_s: float | None = None  # with a trace: the window's first row is the first at or after this time
    tokenizer: str | None = None  # a checkpoint directory with tokenizer.json; None: the bundled target's
    temperature: float = 0.0
    ignore_eos: bool = True
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_classes: list[SloClass] = field(default_factory=list)
    goodput: dict[str, float] | None = None  # vLLM's --goodput; None: each request's own SLO
    rounds: int = 1
    alternate_rates: bool = False
    backend: str = "adaspec"
    model: str | None = None  # the `openai` backend's model name (None: the server's first)
    request_timeout_s: float = 600.0
    max_retries: int = 3
    baseline: str | None = None  # the policy every run's mean TPOT is compared with, round by round (None: the first)

    def __post_init__(self) -> None:
        if not self.policies or any(not server_policy(p) for p in self.policies):
            raise ValueError(f"policies must be non-empty names, got {self.policies}")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"policies must differ (a second copy of one, for an A/A pair, as POLICY{TAG}TAG, e.g. "
                             f"none,none{TAG}2), got {self.policies}")
        if self.baseline is not None and self.baseline not in self.policies:
            raise ValueError(f"the baseline must be one of the policies {self.policies}, got {self.baseline!r}")
        if not self.request_rates or any(not r > 0 for r in self.request_rates):
            raise ValueError(f"request rates must be > 0 (or inf), got {self.request_rates}")
        if len(set(self.request_rates)) != len(self.request_rates):
            raise ValueError(f"request rates must differ, got {self.request_rates}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        for name in ("num_requests", "rounds", "input_len", "output_len", "max_prompt_tokens", "max_output_tokens",
                     "min_output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_output_tokens > self.max_output_tokens:
            raise ValueError(f"min_output_tokens ({self.min_output_tokens}) is above max_output_tokens "
                             f"({self.max_output_tokens})")
        if self.warmup_requests < 0 or self.max_retries < 0:
            raise ValueError("warmup_requests and max_retries must be >= 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.temperature < 0 or not self.request_timeout_s > 0:
            raise ValueError("temperature must be >= 0 and request_timeout_s > 0")
        for value in (self.slo_ttft_ms, self.slo_tpot_ms):
            if value is not None and not value > 0:
                raise ValueError(f"an SLO must be > 0 ms, got {value}")
        if self.slo_classes:
            if self.slo_tpot_ms is not None:
                raise ValueError("give the TPOT SLO either for all requests (slo_tpot_ms) or per class, not both")
            class_fractions(self.slo_classes)
        if self.goodput is not None and (not self.goodput or set(self.goodput) - set(GOODPUT_METRICS)):
            raise ValueError(f"goodput takes limits for {', '.join(GOODPUT_METRICS)}, got {self.goodput}")

    @property
    def has_slo(self) -> bool:
        """Whether requests carry an SLO (then SLO attainment is measured)."""
        return bool(self.slo_classes) or self.slo_ttft_ms is not None or self.slo_tpot_ms is not None

    @property
    def baseline_policy(self) -> str:
        """The policy every run is compared with: `baseline`, or the first policy."""
        return self.baseline if self.baseline is not None else self.policies[0]

    def to_json(self) -> dict:
        out = asdict(self)
        out["baseline"] = self.baseline_policy
        out["request_rates"] = [r if math.isfinite(r) else "inf" for r in self.request_rates]
        out["burstiness"] = self.burstiness if math.isfinite(self.burstiness) else "inf"
        return out
