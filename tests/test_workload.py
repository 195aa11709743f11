"""Workload side of `adaspec demo` and the service benchmarks: trace replay, synthetic windows, prompts, reports."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from adaspec.workload import (
    TraceRequest,
    demo_window,
    find_trace,
    format_table,
    held_out_files,
    load_stats,
    load_trace,
    meets_slo,
    prompt_for,
    prompt_texts,
    summarize,
    synthetic_window,
    window,
)
from adaspec.workload.trace import STATS_PATH, window_start

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"
KW = dict(mean_rate_rps=2.0, max_prompt_tokens=384, max_output_tokens=128)

SMALL_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 23:59:59.9000001,100,10
2023-11-17 00:00:00.0000001,2000,20
2023-11-17 00:00:00.3000001,50,1
2023-11-17 00:00:01.3000001,4000,400
2023-11-17 00:00:01.3500001,7000,3
"""


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    (tmp_path / "azure_llm_2023_code.csv").write_text(SMALL_CSV)
    return tmp_path / "azure_llm_2023_code.csv"


def gaps(reqs: list[TraceRequest]) -> np.ndarray:
    return np.diff([r.arrival_s for r in reqs])


def test_load_trace_parses_fractional_timestamps_exactly(small_trace: Path) -> None:
    reqs = load_trace(small_trace)
    assert [r.arrival_s for r in reqs] == [0.0, 0.1, 0.4, 1.4, 1.45]  # across midnight, 7 fractional digits
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs][3] == (4000, 400)


def test_load_trace_parses_seconds_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "seconds.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n10.5,7,3\n10,5,2\n12.000000001,9,4\n 1.1e1 ,1,1\n")
    reqs = load_trace(path)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5, 1.0, 2.000000001]  # sorted by time, exact to the nanosecond
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(5, 2), (7, 3), (1, 1), (9, 4)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nnan,1,1\n")
    with pytest.raises(ValueError, match="finite"):
        load_trace(path)


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data/traces not present")
def test_load_real_trace() -> None:
    reqs = load_trace(REAL)
    assert len(reqs) == 8819  # the data README's count (the file has no trailing newline)
    assert reqs[0] == TraceRequest(0.0, 4808, 10)
    assert reqs[1].arrival_s == 0.052 and reqs[-1].arrival_s == pytest.approx(3435.948056, abs=1e-9)
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(reqs, reqs[1:]))


def check_window(reqs: list[TraceRequest], src: list[TraceRequest], n: int, min_out: int = 1) -> None:
    assert len(reqs) == n and reqs[0].arrival_s == 0.0
    assert (n - 1) / reqs[-1].arrival_s == pytest.approx(KW["mean_rate_rps"], rel=0.01)
    ratio = gaps(reqs) / gaps(src)  # one factor for every gap: burst shape kept
    assert np.allclose(ratio, ratio[0], rtol=1e-9)
    assert all(1 <= r.prompt_tokens <= KW["max_prompt_tokens"] for r in reqs)
    assert all(min_out <= r.output_tokens <= KW["max_output_tokens"] for r in reqs)


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data/traces not present")
def test_window_on_real_trace() -> None:
    trace = load_trace(REAL)
    for start_s, seed in ((1000.0, 0), (None, 3)):
        reqs = window(trace, start_s=start_s, num_requests=300, seed=seed, min_output_tokens=4, **KW)
        i = window_start(trace, start_s, 300, seed)
        assert trace[i].arrival_s >= (start_s or 0) and (start_s is None or trace[i - 1].arrival_s < start_s)
        check_window(reqs, trace[i:i + 300], 300, min_out=4)
        prompts = np.array([r.prompt_tokens for r in reqs])
        assert (prompts == KW["max_prompt_tokens"]).mean() < 0.1  # scaled, not clipped
        assert len(set(prompts.tolist())) > 50
    assert window(trace, num_requests=50, seed=7, **KW) == window(trace, num_requests=50, seed=7, **KW)


def test_window_token_mapping(small_trace: Path) -> None:
    trace = load_trace(small_trace)
    reqs = window(trace, start_s=0.05, num_requests=4, mean_rate_rps=2.0, max_prompt_tokens=700,
                  max_output_tokens=128)
    assert 3 / reqs[-1].arrival_s == pytest.approx(2.0) and np.allclose(gaps(reqs) / gaps(trace[1:]), 1.5 / 1.35)
    p99_ctx = np.percentile([r.prompt_tokens for r in trace], 99)
    assert [r.prompt_tokens for r in reqs] == [round(c * 700 / p99_ctx) for c in (2000, 50, 4000)] + [700]
    assert [r.output_tokens for r in reqs][2] == 128 and reqs[1].output_tokens == 1
    big = window(trace, start_s=0, num_requests=5, mean_rate_rps=1.0, max_prompt_tokens=10**6,
                 max_output_tokens=10**6)
    assert [r.prompt_tokens for r in big] == [r.prompt_tokens for r in trace]  # never inflated
    with pytest.raises(ValueError):
        window(trace, start_s=1.41, num_requests=2, **KW)


def test_stats_file_is_small_and_attributed() -> None:
    assert STATS_PATH.stat().st_size < 20_000
    st = load_stats()
    assert st["licence"] == "CC BY 4.0" and "Splitwise" in st["citation"] and "Azure" in st["source"]
    assert {len(v) for v in st["quantiles"].values()} == {len(st["quantiles"]["percent"])}


def test_synthetic_window_matches_shipped_statistics() -> None:
    st = load_stats()
    qs, pct = st["quantiles"], st["quantiles"]["percent"]
    big = dict(mean_rate_rps=st["mean_rate_rps"], max_prompt_tokens=10**6, max_output_tokens=10**6)
    reqs = synthetic_window(num_requests=4000, seed=1, **big)
    ctx = np.array([r.prompt_tokens for r in reqs])
    gen = np.array([r.output_tokens for r in reqs])
    g = gaps(reqs)
    assert np.median(ctx) == pytest.approx(qs["context_tokens"][pct.index(50)], rel=0.2)
    assert np.median(gen) == pytest.approx(qs["generated_tokens"][pct.index(50)], rel=0.2)
    assert np.percentile(gen, 90) == pytest.approx(qs["generated_tokens"][pct.index(90)], rel=0.2)
    lg = qs["log_gap_s"]  # the gaps are rescaled to the rate: compare a scale-free ratio
    assert np.log(np.percentile(g, 90) / np.median(g)) == pytest.approx(lg[pct.index(90)] - lg[pct.index(50)], rel=0.2)

    kw = dict(num_requests=64, min_output_tokens=8, **KW)
    a, b, c = synthetic_window(seed=5, **kw), synthetic_window(seed=5, **kw), synthetic_window(seed=6, **kw)
    assert a == b and a != c
    assert len(a) == 64 and (63 / a[-1].arrival_s) == pytest.approx(2.0)
    assert all(1 <= r.prompt_tokens <= 384 and 8 <= r.output_tokens <= 128 for r in a)


def test_demo_window_falls_back_without_the_trace(tmp_path: Path, monkeypatch, small_trace: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ADASPEC_TRACES_DIR", str(empty))
    assert find_trace() is None  # set: only that folder is searched
    reqs, desc = demo_window(num_requests=20, seed=2, **KW)
    assert reqs == synthetic_window(num_requests=20, seed=2, **KW)
    assert "synthetic" in desc and "CC BY 4.0" in desc and "Splitwise" in desc

    monkeypatch.setenv("ADASPEC_TRACES_DIR", str(small_trace.parent))
    assert find_trace() == small_trace
    reqs, desc = demo_window(num_requests=3, start_s=0.0, **KW)
    assert [r.prompt_tokens for r in reqs][:1] == [window(load_trace(small_trace), start_s=0.0, num_requests=3,
                                                          **KW)[0].prompt_tokens]
    assert "synthetic" not in desc and small_trace.name in desc and "CC BY 4.0" in desc


def test_summarize_exact() -> None:
    results = [
        dict(ok=True, error=None, output_tokens=10, ttft_s=0.1, tpot_s=0.02, draft_tokens=20, accepted_tokens=10,
             mean_k=4.0),
        dict(ok=True, error=None, output_tokens=1, ttft_s=0.3, tpot_s=None, draft_tokens=0, accepted_tokens=0,
             mean_k=0.0),
        dict(ok=True, error=None, output_tokens=9, ttft_s=0.2, tpot_s=0.05, draft_tokens=10, accepted_tokens=8,
             mean_k=2.0),
        dict(ok=False, error="UNAVAILABLE", output_tokens=3, ttft_s=0.1, tpot_s=0.01, draft_tokens=5,
             accepted_tokens=5, mean_k=8.0),
    ]
    s = summarize(results, wall_s=4.0, slo_ttft_ms=250, slo_tpot_ms=40)
    assert (s["requests"], s["completed"], s["failed"], s["output_tokens"]) == (4, 3, 1, 20)
    assert s["output_tok_s"] == 5.0
    assert s["ttft_p50_ms"] == pytest.approx(200.0) and s["ttft_p99_ms"] == pytest.approx(298.0)
    assert s["tpot_p50_ms"] == pytest.approx(35.0) and s["tpot_p99_ms"] == pytest.approx(49.7)
    assert s["slo_attainment"] == 0.25  # only the first: #2 misses TTFT, #3 TPOT, #4 failed
    assert s["mean_k"] == 2.0 and s["acceptance_rate"] == pytest.approx(18 / 30)
    assert s["errors"] == {"UNAVAILABLE": 1}
    empty = summarize([], wall_s=1.0, slo_ttft_ms=1, slo_tpot_ms=1)
    assert empty["requests"] == 0 and empty["ttft_p50_ms"] is None and empty["acceptance_rate"] is None


def test_format_table() -> None:
    rows = [{"policy": "none", "tok_s": 12.345, "k": None}, {"policy": "fixed:4", "tok_s": 101.0, "k": 4}]
    text = format_table(rows, ["policy", ("tok_s", "tokens/s", ".1f"), ("k", "mean k")])
    lines = text.splitlines()
    assert lines[0].split() == ["policy", "tokens/s", "mean", "k"]
    assert lines[2].split() == ["none", "12.3", "-"] and lines[3].split() == ["fixed:4", "101.0", "4"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned: numeric columns right-justified to the end
    md = format_table(rows, ["policy", ("tok_s", "tokens/s", ".1f")], markdown=True).splitlines()
    assert md == ["| policy  | tokens/s |", "| ------- | -------: |",
                  "| none    |     12.3 |", "| fixed:4 |    101.0 |"]


def test_meets_slo() -> None:
    assert meets_slo(100, 20, 100, 20) and not meets_slo(101, 20, 100, 20) and not meets_slo(100, 21, 100, 20)
    assert meets_slo(None, None, None, None) and not meets_slo(None, None, 100, None)  # no token: misses TTFT
    assert meets_slo(50, None, 100, 20)  # under 2 tokens: no TPOT, meets the TPOT limit
    assert meets_slo(50, 10, None, None, e2el_ms=300, slo_e2el_ms=300) and not meets_slo(50, 10, None, None, 301, 300)


def test_prompts_from_held_out_stdlib() -> None:
    held = held_out_files()
    assert held
    training = json.loads((ROOT / "models" / "TRAINING.json").read_text())["held_out_files"]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rel = {str(p.relative_to(stdlib)) for p in held}
    assert {f for f in training if (stdlib / f).is_file()} <= rel  # same rule as scripts/train_models.py

    texts = prompt_texts(4, seed=0)
    assert texts == prompt_texts(4, seed=0) and len(set(texts)) == 4
    words = str.split
    for n, text in zip((5, 60, 300, 600), texts):
        p = prompt_for(n, text, words)
        assert abs(len(words(p)) - n) <= max(1, 0.1 * n)
        assert text.startswith(p)
    assert prompt_for(40, texts[0], words).endswith("\n")  # a line boundary, when one is close enough
    assert 45 <= len(words(prompt_for(50, "x = 1\n", words))) <= 50  # a short source is repeated
