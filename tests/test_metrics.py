"""The services' metrics are the ones docs/deployment.md plans (and the dashboard reads): names, types, labels
and which service emits them. Their values after a real workload are checked in `test_services_small.py`."""

from __future__ import annotations

import re
from pathlib import Path

from adaspec.loadstore import ReplicaLoad
from adaspec.service_runtime.metrics import CoordinatorMetrics, ReplicaMetrics

ROOT = Path(__file__).resolve().parents[1]


def metrics_table() -> dict[str, tuple[str, set[str], set[str]]]:
    """{Prometheus name: (type, labels, emitting services)} from the table of docs/deployment.md's "Metrics"."""
    section = (ROOT / "docs" / "deployment.md").read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*) \| ([^|]*) \|", section, re.MULTILINE)
    assert len(rows) >= 10, "the metrics table was not found"
    return {name: (kind, set(re.findall(r"`(\w+)`", labels)), {s.strip() for s in emitters.split(",")})
            for name, kind, labels, emitters in rows}


def emitted(registry) -> dict[str, tuple[str, set[str]]]:
    """{Prometheus name: (type, labels)} of the AdaSpec metrics in `registry` (not the process's own)."""
    found = {}
    for family in registry.collect():
        if family.name.startswith(("adaspec_", "gen_ai_")):
            name = f"{family.name}_total" if family.type == "counter" else family.name
            labels = {k for s in family.samples for k in s.labels if k != "le"}
            found[name] = (family.type, labels)
    return found


def test_each_service_emits_exactly_the_planned_metrics():
    coordinator = CoordinatorMetrics()
    coordinator.step("default", "adaspec", 3, 2)  # a labelled metric shows its labels once it has a sample
    coordinator.finished("adaspec", 0.1, 0.02, 1.0, True)
    replica = ReplicaMetrics("verify", "verify-0", "default")
    replica.update(ReplicaLoad(replica_id="verify-0", kind="verify", pool="default", address="127.0.0.1:1",
                               sessions=2, free_kv_blocks=30, total_kv_blocks=40, queued_tokens=7))
    replica.step(12.0)
    planned = metrics_table()
    for service, registry in (("coordinator", coordinator.registry), ("verify", replica.registry)):
        expected = {name: (kind, labels) for name, (kind, labels, emitters) in planned.items() if service in emitters}
        assert emitted(registry) == expected, service
    samples = {s.name: s.value for family in replica.registry.collect() for s in family.samples}
    assert samples["adaspec_replica_kv_usage_ratio"] == 0.25
    assert samples["adaspec_replica_queued_tokens"] == 7
    assert samples["adaspec_engine_step_duration_seconds_sum"] == 0.012
    assert samples["process_resident_memory_bytes"] > 0


def test_k_0_steps_count_in_the_draft_length_only():
    metrics = CoordinatorMetrics()
    for k, accepted in ((0, 0), (4, 3), (0, 0), (2, 0)):
        metrics.step("a", "adaspec", k, accepted)
    samples = {s.name: s.value for family in metrics.registry.collect() for s in family.samples
               if s.labels.get("pool") == "a" and "le" not in s.labels}
    assert samples["adaspec_draft_length_count"] == 4
    assert samples["adaspec_spec_decode_num_drafts_total"] == 2
    assert samples["adaspec_spec_decode_num_draft_tokens_total"] == 6
    assert samples["adaspec_spec_decode_num_accepted_tokens_total"] == 3
