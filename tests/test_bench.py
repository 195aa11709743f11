"""`adaspec bench`: arrivals, interleaving, SLO classes, vLLM's metrics from constructed records, and end to end
against a real stack (bundled models, in-process load store) through the runner and through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaspec.bench.arrivals import at_rate, gamma_arrivals
from adaspec.bench.backend import RequestFailed
from adaspec.bench.config import BenchConfig, server_policy
from adaspec.bench.measure import request_record
from adaspec.bench.metrics import aggregate_rows, request_metrics, run_row
from adaspec.bench.plan import run_order
from adaspec.bench.plot import plot_rows
from adaspec.bench.report import markdown_tables, write_results
from adaspec.bench.runner import run_bench
from adaspec.bench.slo import SloClass, assign_classes, class_fractions, parse_goodput, parse_slo_class
from adaspec.bench.workload import BenchRequest, build_workload
from adaspec.cli import main
from adaspec.stack import Stack, StackConfig
from adaspec.workload import load_trace, meets_slo, tokenizer_for
from adaspec.workload.trace import window_start

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_FIELDS = [
    "policy", "rate", "rounds", "requests", "completed", "failed", "errors", "duration_s", "request_throughput",
    "output_throughput", "output_tok_s", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms", "slo_attainment",
    "goodput", "request_goodput", "mean_k", "acceptance_rate", "warmup_failed",
]


def record(ok=True, ttft=None, tpot=None, e2el=None, itl=(), tokens=0, slo=(None, None), cls=None, drafted=0,
           accepted=0, k=0.0, policy="p", rate=1.0, round_index=0) -> dict:
    """A per-request record as `request_record` writes it (plus what the runner adds)."""
    has_slo = slo != (None, None)
    met = ok and meets_slo(ttft, tpot, *slo)
    return {"policy": policy, "rate": rate, "round": round_index, "index": 0, "class": cls, "prompt_tokens": 10,
            "max_tokens": tokens, "ok": ok, "error": None if ok else "UNAVAILABLE: gone",
            "error_code": None if ok else "UNAVAILABLE", "output_tokens": tokens, "ttft_ms": ttft, "tpot_ms": tpot,
            "e2el_ms": e2el, "itl_ms": list(itl), "draft_tokens": drafted, "accepted_tokens": accepted, "mean_k": k,
            "acceptance_rate": accepted / drafted if drafted else 0.0, "slo_ttft_ms": slo[0], "slo_tpot_ms": slo[1],
            "slo_met": met if has_slo else None, "server_slo_met": met if has_slo else None, "server_policy": policy}


TIGHT, LOOSE = (200.0, 25.0), (1000.0, 100.0)
RECORDS = [
    # 11 tokens in 6 chunks: TTFT 100, then 5 gaps of 40 ms -> E2EL 300, TPOT (300 - 100) / 10 = 20
    record(ttft=100, tpot=20, e2el=300, itl=[40] * 5, tokens=11, slo=TIGHT, cls="tight", drafted=20, accepted=10,
           k=4.0),
    record(ttft=300, tpot=10, e2el=400, itl=[10] * 10, tokens=11, slo=TIGHT, cls="tight", drafted=10, accepted=8,
           k=2.0),  # misses its TTFT
    record(ttft=50, tpot=None, e2el=50, tokens=1, slo=LOOSE, cls="loose"),  # one token: no TPOT, meets
    record(ok=False, slo=LOOSE, cls="loose"),  # failed: a miss
]


def test_metrics_from_records() -> None:
    m = request_metrics(RECORDS, duration_s=2.0)
    assert (m["requests"], m["completed"], m["failed"]) == (4, 3, 1) and m["errors"] == {"UNAVAILABLE: gone": 1}
    assert m["total_output_tokens"] == 23 and m["output_tok_s"] == m["output_throughput"] == 11.5
    assert m["request_throughput"] == 1.5 and m["total_token_throughput"] == (30 + 23) / 2
    assert m["mean_ttft_ms"] == 150 and m["median_ttft_ms"] == 100
    assert m["p99_ttft_ms"] == pytest.approx(100 + 0.98 * 200)  # numpy linear: 50, 100, 300 at 0.99 * 2
    assert m["mean_tpot_ms"] == 15 and m["p99_tpot_ms"] == pytest.approx(19.9)
    assert m["mean_itl_ms"] == pytest.approx(300 / 15) and m["p99_itl_ms"] == pytest.approx(40)
    assert m["mean_e2el_ms"] == 250
    assert m["slo_attainment"] == 0.5 and m["server_slo_attainment"] == 0.5  # records 0 and 2 of 4
    assert m["goodput"] == m["request_goodput"] == 1.0  # own SLOs: 2 requests in 2 s
    assert m["mean_k"] == 2.0 and m["acceptance_rate"] == pytest.approx(18 / 30)
    assert request_metrics(RECORDS, 2.0, goodput={"e2el": 350})["goodput"] == 1.0  # 300 and 50 ms, per 2 s
    assert request_metrics(RECORDS, 2.0, goodput={"tpot": 15, "ttft": 400})["goodput"] == 1.0  # TPOT 10, none
    assert m["classes"]["tight"] == {"requests": 2, "failed": 0, "slo_ttft_ms": 200.0, "slo_tpot_ms": 25.0,
                                     "slo_attainment": 0.5, "mean_ttft_ms": 200.0, "p99_ttft_ms": pytest.approx(298),
                                     "mean_tpot_ms": 15.0, "p99_tpot_ms": pytest.approx(19.9), "goodput": 0.5}
    loose = m["classes"]["loose"]
    assert (loose["requests"], loose["failed"], loose["slo_attainment"], loose["goodput"]) == (2, 1, 0.5, 0.5)
    assert loose["mean_tpot_ms"] is None  # its one completed request has no TPOT

    plain = [dict(r, slo_met=None, server_slo_met=None, slo_ttft_ms=None, slo_tpot_ms=None, **{"class": None})
             for r in RECORDS]
    m = request_metrics(plain, 2.0)
    assert m["slo_attainment"] is None and m["goodput"] is None and "classes" not in m
    assert request_metrics(plain, 2.0, goodput={"ttft": 120})["goodput"] == 1.0  # vLLM's --goodput alone
    empty = request_metrics([record(ok=False)], 1.0)
    assert empty["mean_ttft_ms"] is None and empty["p99_itl_ms"] is None and empty["acceptance_rate"] is None


def test_rows_pool_rounds_and_keep_the_spread(tmp_path: Path) -> None:
    runs, records = [], []
    for round_index, (duration, tpot) in enumerate([(2.0, 20.0), (3.0, 40.0)]):
        for policy in ("a", "b"):
            mine = [record(ttft=100, tpot=tpot, e2el=100 + 10 * tpot, itl=[tpot] * 10, tokens=11, slo=(500, 30),
                           cls=c, policy=policy, rate=4.0, round_index=round_index) for c in ("x", "y")]
            runs.append(run_row(policy, 4.0, round_index, mine, duration, None, warmup_failed=round_index))
            records += mine
    rows = aggregate_rows(runs, records, ["a", "b"], [4.0, math.inf], None)
    assert [(r["policy"], r["rate"], r["rounds"]) for r in rows] == [("a", 4.0, 2), ("b", 4.0, 2)]
    row = rows[0]
    assert row["requests"] == 4 and row["duration_s"] == 5.0 and row["request_throughput"] == 4 / 5
    assert row["mean_tpot_ms"] == 30 and (row["mean_tpot_ms_min"], row["mean_tpot_ms_max"]) == (20, 40)
    assert (row["slo_attainment_min"], row["slo_attainment_max"]) == (0.0, 1.0) and row["slo_attainment"] == 0.5
    assert (row["output_tok_s_min"], row["output_tok_s_max"]) == (22 / 3, 11.0) and row["warmup_failed"] == 1
    assert set(row["classes"]) == {"x", "y"}

    md = markdown_tables({"rows": rows})
    assert "| a " in md and "rounds min-max" in md and "| x " in md and "500 / 30" in md
    plot_rows(rows, tmp_path / "rows.png", title="constructed rows")
    assert (tmp_path / "rows.png").read_bytes()[:8] == PNG_MAGIC


def test_rows_compare_each_round_with_the_baseline_and_tagged_copies_are_policies_of_their_own() -> None:
    tpots = {"a": [20.0, 40.0, 30.0], "b": [30.0, 40.0, 15.0], "a#2": [22.0, 36.0, 33.0]}  # per round
    runs, records = [], []
    for policy, per_round in tpots.items():
        for round_index, tpot in enumerate(per_round):
            if policy == "a" and round_index == 2:
                continue  # the baseline's run is missing in this round: its ratios have nothing to go by
            mine = [record(ttft=100, tpot=tpot, e2el=100 + 10 * tpot, tokens=11, policy=policy, rate=2.0,
                           round_index=round_index)]
            runs.append(run_row(policy, 2.0, round_index, mine, 1.0, None, warmup_failed=0))
            records += mine
    rows = {row["policy"]: row for row in aggregate_rows(runs, records, list(tpots), [2.0], None, baseline="a")}
    assert rows["b"]["mean_tpot_vs_baseline"] == pytest.approx((1.5 + 1.0) / 2)  # the median of rounds 0 and 1
    assert (rows["b"]["mean_tpot_vs_baseline_min"], rows["b"]["mean_tpot_vs_baseline_max"]) == (1.0, 1.5)
    assert rows["a#2"]["mean_tpot_vs_baseline_min"] == pytest.approx(0.9)
    assert rows["a"]["mean_tpot_vs_baseline"] == 1.0
    single = aggregate_rows(runs[:1] + runs[2:3], records, ["a", "b"], [2.0], None, baseline="a")
    assert single[1]["mean_tpot_vs_baseline"] == 1.5 and "mean_tpot_vs_baseline_min" not in single[1]
    assert "mean_tpot_vs_baseline" not in aggregate_rows(runs, records, list(tpots), [2.0], None)[0]

    md = markdown_tables({"rows": list(rows.values()), "config": {"baseline": "a"}})
    assert "mean TPOT vs a, per round" in md and "| 1.25 (1.00-1.50)" in md

    config = BenchConfig(policies=["none", "none#2", "fixed:4"])
    assert config.baseline_policy == config.to_json()["baseline"] == "none"
    assert [server_policy(p) for p in config.policies] == ["none", "none", "fixed:4"]
    with pytest.raises(ValueError, match="none#2"):
        BenchConfig(policies=["none", "none"])
    with pytest.raises(ValueError, match="baseline"):
        BenchConfig(policies=["none", "fixed:4"], baseline="fixed:2")
    with pytest.raises(ValueError, match="non-empty"):
        BenchConfig(policies=["none", "#2"])


def test_request_record_times_chunks_as_vllm() -> None:
    request = BenchRequest(3, "def f():", 4, 5, "tight", 200.0, 50.0)
    r = request_record(request, 10.0, [10.1, 10.15, 10.35], 5, {"output_tokens": 5, "mean_k": 2.0}, None)
    assert r["ttft_ms"] == pytest.approx(100) and r["e2el_ms"] == pytest.approx(350)
    assert r["tpot_ms"] == pytest.approx(62.5) and r["itl_ms"] == pytest.approx([50, 200])  # per chunk, not per token
    assert r["ok"] and r["slo_met"] is False and r["class"] == "tight" and r["mean_k"] == 2.0  # TPOT 62.5 > 50
    one = request_record(request, 0.0, [0.05], 1, {}, None)
    assert one["tpot_ms"] is None and one["itl_ms"] == [] and one["slo_met"] is True
    failed = request_record(request, 0.0, [0.05], 1, {}, RequestFailed("UNAVAILABLE", "no verify replica"))
    assert not failed["ok"] and failed["slo_met"] is False and failed["error_code"] == "UNAVAILABLE"
    assert failed["error"] == "UNAVAILABLE: no verify replica"
    no_slo = BenchRequest(0, "x", 1, 2, None, None, None)
    assert request_record(no_slo, 0.0, [0.1, 0.2], 2, {}, None)["slo_met"] is None


def test_gamma_arrivals_rate_and_burstiness() -> None:
    n = 20_000
    cv = {}
    for burstiness in (0.25, 1.0, 4.0):
        unit = gamma_arrivals(n, burstiness, np.random.default_rng(1))
        assert np.all(np.diff(unit) >= 0) and unit[0] > 0  # the first request waits its own gap, as in vLLM
        assert n / unit[-1] == pytest.approx(1.0)  # vLLM's normalisation: the last send at n / rate
        at4 = at_rate(unit, 4.0)
        assert n / at4[-1] == pytest.approx(4.0)
        assert (n // 2) / at4[n // 2 - 1] == pytest.approx(4.0, rel=0.05)  # the mean rate holds on a part too
        gaps = np.diff(np.concatenate([[0.0], at4]))
        cv[burstiness] = gaps.std() / gaps.mean()
    assert cv[1.0] == pytest.approx(1.0, abs=0.05)  # Poisson
    assert cv[0.25] == pytest.approx(2.0, rel=0.1) and cv[4.0] == pytest.approx(0.5, rel=0.1)
    assert np.allclose(np.diff(gamma_arrivals(5, math.inf, np.random.default_rng(0))), 1.0)
    assert not at_rate(unit, math.inf).any()
    with pytest.raises(ValueError):
        at_rate(unit, 0.0)


def write_seconds_trace(path: Path) -> Path:
    rows = [(0.0, 40, 5), (0.5, 900, 300), (0.6, 30, 8), (2.6, 60, 2), (2.65, 10, 12), (4.0, 80, 9)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{c},{g}\n" for t, c, g in rows))
    return path


def test_trace_arrivals_keep_order_and_gap_ratios_at_every_rate(tmp_path: Path) -> None:
    trace = write_seconds_trace(tmp_path / "seconds.csv")  # TIMESTAMP in seconds
    config = BenchConfig(policies=["none"], trace=str(trace), num_requests=5, max_prompt_tokens=64,
                         max_output_tokens=16, min_output_tokens=4, seed=0)
    workload = build_workload(config, tokenizer_for(None))
    rows = load_trace(trace)
    start = window_start(rows, None, 5, config.seed)
    trace_gaps = np.diff([r.arrival_s for r in rows[start:start + 5]])
    for rate in (0.5, 2.0, 8.0):
        times = workload.arrivals(rate)
        assert times[0] == 0 and np.all(np.diff(times) >= 0) and 4 / times[-1] == pytest.approx(rate)
        ratio = np.diff(times) / trace_gaps
        assert np.allclose(ratio, ratio[0])  # one factor for every gap: order and burst shape kept
    assert not workload.arrivals(math.inf).any()
    assert all(1 <= r.prompt_tokens <= 64 and 4 <= r.max_tokens <= 16 for r in workload.requests)


def test_azure_traces_without_the_shared_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ADASPEC_TRACES_DIR", str(tmp_path))
    kw = {"policies": ["none"], "num_requests": 3, "max_prompt_tokens": 32, "max_output_tokens": 8,
          "min_output_tokens": 2}
    workload = build_workload(BenchConfig(trace="azure-code", **kw), tokenizer_for(None))
    assert "synthetic" in workload.description and len(workload.requests) == 3
    with pytest.raises(FileNotFoundError, match="azure_llm_2023_conv"):
        build_workload(BenchConfig(trace="azure-conv", **kw), tokenizer_for(None))


def test_slo_classes_and_goodput_parsing() -> None:
    assert parse_slo_class("chat:50:1000:0.8") == SloClass("chat", 50.0, 1000.0, 0.8)
    assert parse_slo_class("batch:200::0.2") == SloClass("batch", 200.0, None, 0.2)
    assert parse_slo_class("any:30") == SloClass("any", 30.0)
    for bad in ("chat", "chat:0", "chat:x", ":50", "chat:50:1000:1.5", "a:1:2:0.5:9"):
        with pytest.raises(ValueError):
            parse_slo_class(bad)
    classes = [parse_slo_class("chat:50:1000:0.8"), parse_slo_class("batch:200")]
    assert class_fractions(classes) == pytest.approx([0.8, 0.2])
    picks = [c.name for c in assign_classes(classes, 20_000, np.random.default_rng(0))]
    assert picks.count("chat") / len(picks) == pytest.approx(0.8, abs=0.015)
    equal = [SloClass(n, 10.0) for n in "abc"]
    counts = np.unique([c.name for c in assign_classes(equal, 30_000, np.random.default_rng(1))], return_counts=True)
    assert np.allclose(counts[1] / 30_000, 1 / 3, atol=0.015)
    assert assign_classes(classes, 50, np.random.default_rng(7)) == assign_classes(classes, 50,
                                                                                  np.random.default_rng(7))
    for bad in ([SloClass("a", 1, fraction=0.5), SloClass("b", 1, fraction=0.4)],
                [SloClass("a", 1, fraction=1.0), SloClass("b", 1)], [SloClass("a", 1), SloClass("a", 2)]):
        with pytest.raises(ValueError):
            class_fractions(bad)
    assert parse_goodput(["ttft:500", "tpot:50", "e2el:3000"]) == {"ttft": 500, "tpot": 50, "e2el": 3000}
    for bad in (["itl:5"], ["ttft:0"], ["ttft"], ["ttft:1", "ttft:2"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_run_order_interleaves_and_rotates() -> None:
    order = run_order(["a", "b", "c"], [1.0, 2.0], rounds=3)
    assert sorted(order) == sorted((r, rate, p) for r in range(3) for rate in (1.0, 2.0) for p in "abc")
    by_round = [[p for r, rate, p in order if r == k and rate == 1.0] for k in range(3)]
    assert by_round == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]  # each policy first once
    assert [rate for r, rate, _ in order if r == 0] == [1.0] * 3 + [2.0] * 3  # every policy at a rate, then the next
    alternating = run_order(["a", "b"], [1.0, 2.0], rounds=2, alternate_rates=True)
    assert [rate for _, rate, _ in alternating] == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("argv", [
    ["--request-rate", "0"], ["--request-rate", "x"], ["--burstiness", "-1"], ["--goodput", "itl:5"],
    ["--slo-class", "chat"], ["--policies", "none,,fixed:2"], ["--policies", "none,none"], ["--target", "localhost"],
    ["--num-requests", "0"], ["--backend", "grpc"],
])
def test_bad_options_are_argparse_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_replica_args_reach_every_replica_of_the_stack(monkeypatch) -> None:
    """`--replica-args` (a shell-quoted string) ends up in both replicas' `adaspec serve` arguments; the stack is
    stopped short at its construction, so no process starts."""
    configs = []

    class Started(Exception):
        pass

    def stack(config: StackConfig):
        configs.append(config)
        raise Started

    monkeypatch.setattr("adaspec.stack.Stack", stack)
    with pytest.raises(Started):
        main(["bench", "--replica-args=--cuda-graphs --kv-cache-mb 64", "--verify-replicas", "2"])
    assert configs[0].verify_args == configs[0].draft_args == ["--cuda-graphs", "--kv-cache-mb", "64"]
    assert configs[0].verify_replicas == 2


def test_bad_combinations_are_errors(capsys) -> None:
    assert main(["bench", "--target", "127.0.0.1:1", "--slo-class", "a:50", "--slo-tpot-ms", "50"]) == 2
    assert "either for all requests" in capsys.readouterr().err
    with pytest.raises(ValueError, match="min_output_tokens"):
        BenchConfig(policies=["none"], min_output_tokens=20, max_output_tokens=10)


def test_the_bench_does_not_import_torch() -> None:
    code = ("import sys, adaspec.bench.cli, adaspec.bench.runner, adaspec.bench.report; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(StackConfig(http=True, log_dir=str(tmp_path_factory.mktemp("bench-stack-logs")))) as running:
        yield running
    assert set(running.exit_codes().values()) == {0}, running.exit_report()


def test_bench_end_to_end(stack, tmp_path: Path) -> None:
    config = BenchConfig(policies=["none", "fixed:2"], request_rates=[8.0, math.inf], num_requests=4,
                         trace="azure-code", max_prompt_tokens=64, max_output_tokens=16, min_output_tokens=4,
                         slo_ttft_ms=5000.0, slo_classes=[SloClass("tight", 1000.0), SloClass("loose", 5000.0)],
                         warmup_requests=1, seed=3)
    results = run_bench(config, stack.address)
    rows = results["rows"]
    assert [(r["policy"], r["rate"]) for r in rows] == [("none", 8.0), ("fixed:2", 8.0), ("none", math.inf),
                                                        ("fixed:2", math.inf)]
    for row in rows:
        assert all(field in row for field in ROW_FIELDS), set(ROW_FIELDS) - set(row)
        assert (row["requests"], row["completed"], row["failed"], row["warmup_failed"]) == (4, 4, 0, 0), row["errors"]
        assert row["rounds"] == 1 and row["output_tok_s"] > 0 and row["slo_attainment"] == 1.0
        assert row["goodput"] == pytest.approx(4 / row["duration_s"])
        assert sum(c["requests"] for c in row["classes"].values()) == 4
        assert (row["mean_k"] == 0) == (row["policy"] == "none")
        assert (row["acceptance_rate"] is None) == (row["policy"] == "none")
    assert len(results["runs"]) == 4 and {r["round"] for r in results["runs"]} == {0}
    records = results["requests"]
    assert len(records) == 16
    for r in records:
        assert r["ok"] and r["error"] is None and r["server_policy"] == r["policy"]
        assert r["output_tokens"] == r["max_tokens"] <= 16 and 1 <= r["prompt_tokens"] <= 64  # ignore_eos
        assert 0 < r["ttft_ms"] <= r["e2el_ms"] and r["tpot_ms"] > 0 and r["class"] in ("tight", "loose")
        assert r["e2el_ms"] - r["ttft_ms"] == pytest.approx(sum(r["itl_ms"]), abs=0.01)
        assert r["slo_tpot_ms"] == {"tight": 1000.0, "loose": 5000.0}[r["class"]] and r["slo_ttft_ms"] == 5000.0
    fixed = [r for r in records if r["policy"] == "fixed:2"]
    assert any(len(r["itl_ms"]) < r["output_tokens"] - 1 for r in fixed)  # chunks of several tokens

    json_path, md_path, png_path = write_results(results, tmp_path / "out" / "bench.json")
    saved = json.loads(json_path.read_text())
    assert saved["config"]["request_rates"] == [8.0, "inf"] and saved["rows"][2]["rate"] == "inf"
    assert len(saved["requests"]) == 16 and saved["workload"] == results["workload"]
    md = md_path.read_text()
    assert "| policy" in md and "| fixed:2" in md and "| tight" in md and "azure_llm_2023_code" in md
    assert png_path.stat().st_size > 10_000 and png_path.read_bytes()[:8] == PNG_MAGIC


def test_bench_cli_against_a_running_stack(stack, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli" / "bench.json"
    rc = main(["bench", "--target", stack.address, "--policies", "fixed:2,fixed:2#again", "--baseline",
               "fixed:2#again", "--request-rate", "inf", "--num-requests", "2", "--input-len", "24",
               "--output-len", "6", "--warmup-requests", "0", "--max-concurrency", "1", "--slo-tpot-ms", "2000",
               "--goodput", "ttft:5000", "tpot:2000", "--output-json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| fixed:2 " in printed and "| fixed:2#again" in printed and str(out) in printed
    assert "mean TPOT vs fixed:2#again, per round" in printed
    saved = json.loads(out.read_text())
    row, again = saved["rows"]
    assert (row["policy"], row["rate"], row["requests"], row["failed"]) == ("fixed:2", "inf", 2, 0)
    assert again["mean_tpot_vs_baseline"] == 1.0 and row["mean_tpot_vs_baseline"] > 0
    assert saved["config"]["goodput"] == {"ttft": 5000.0, "tpot": 2000.0} and row["goodput"] > 0
    assert {r["server_policy"] for r in saved["requests"]} == {"fixed:2"}  # the tag is the bench's, not the server's
    first, second = sorted((r for r in saved["requests"] if r["policy"] == "fixed:2"), key=lambda r: r["send_s"])
    assert second["send_s"] >= first["send_s"] + first["e2el_ms"] / 1e3  # --max-concurrency 1: one after the other
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 0


def test_invalid_policy_is_recorded_not_fatal(stack) -> None:
    config = BenchConfig(policies=["no-such-policy"], request_rates=[math.inf], num_requests=3, input_len=16,
                         output_len=4, slo_tpot_ms=100.0)
    results = run_bench(config, stack.address)
    row = results["rows"][0]
    assert (row["requests"], row["failed"], row["warmup_failed"], row["slo_attainment"]) == (3, 3, 1, 0.0)
    assert row["mean_ttft_ms"] is None and row["goodput"] == 0.0
    assert all(r["error_code"] == "INVALID_ARGUMENT" and "policy" in r["error"] for r in results["requests"])


def test_the_openai_backend_drives_the_http_api_side_by_side_with_grpc(stack) -> None:
    """The same workload through AdaSpec's OpenAI-compatible API (`--backend openai`) and its gRPC API: every
    request completes with the same output tokens, the server's statistics come back, errors carry their status."""
    config = BenchConfig(policies=["fixed:2"], request_rates=[math.inf], num_requests=3, input_len=16, output_len=6,
                         warmup_requests=0)
    grpc_rows = run_bench(config, stack.address)
    http = run_bench(dataclasses.replace(config, backend="openai"), stack.http_url + "/v1")
    assert [r["output_tokens"] for r in http["requests"]] == [r["output_tokens"] for r in grpc_rows["requests"]]
    assert all(r["ok"] and r["server_policy"] == "fixed:2" and r["draft_tokens"] > 0 for r in http["requests"])
    assert http["rows"][0]["failed"] == 0 and http["rows"][0]["mean_k"] > 0
    bad = run_bench(dataclasses.replace(config, backend="openai", policies=["no-such-policy"]), stack.http_url + "/v1")
    assert {r["error_code"] for r in bad["requests"]} == {"INVALID_ARGUMENT"}
