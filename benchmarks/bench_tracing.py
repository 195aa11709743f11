"""What tracing costs, and one real trace drawn as a waterfall.

    python benchmarks/bench_tracing.py          # writes results/tracing.{json,png} and results/trace-waterfall.png

The stack (coordinator, one verify and one draft replica, bundled pair) runs alternately with tracing off and on
(OTLP/gRPC to a receiver in this process, which keeps every span), `--rounds` times each, starting with a
different one each round. Each run sends the same `--requests` greedy requests (`fixed:2`, 64 tokens) with
`--concurrency` in flight. Reported: mean TPOT and wall time per run, on/off ratios per round with their spread,
and spans exported per request. The waterfall is the first request's trace of the last traced run (its first steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from unittest import mock

from otlp_receiver import OtlpReceiver  # the script directory is on sys.path
from tqdm import tqdm

from adaspec import AsyncClient
from adaspec.stack import Stack, StackConfig

OUT_DIR = Path(__file__).resolve().parent / "results"
WATERFALL_STEPS = 10
PROMPTS = ["def fib(n):", "import os\n", "class Stack:", "for i in range(", "def parse(text):", "# utils\n",
           "async def main():", "x = [", "def __init__(self", "while True:", "try:\n", "return {"]


async def workload(address: str, requests: int, concurrency: int) -> tuple[list, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(client, prompt):
        async with gate:
            return (await client.generate(prompt, max_tokens=64, temperature=0, ignore_eos=True,
                                          policy="fixed:2")).stats

    async with AsyncClient(address) as client:
        await one(client, "warm up")
        start = time.perf_counter()
        stats = await asyncio.gather(*(one(client, PROMPTS[i % len(PROMPTS)]) for i in range(requests)))
        return stats, time.perf_counter() - start


def run(traced: bool, sink: OtlpReceiver, args) -> dict:
    env = sink.exporter_env(span_delay_ms=500) if traced else {}
    stack = Stack(StackConfig(profile=args.profile))
    try:
        with mock.patch.dict(os.environ, env):  # the services' environment
            stack.start()
        stats, wall_s = asyncio.run(workload(stack.address, args.requests, args.concurrency))
    finally:
        stack.stop()
    return {"traced": traced, "mean_tpot_ms": statistics.fmean(s.tpot_ms for s in stats), "wall_s": wall_s,
            "trace_ids": [s.trace_id for s in stats]}


def draw_waterfall(spans: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    by_id = {s["span_id"]: s for s in spans}

    def depth(span):
        return 0 if span["parent"] not in by_id else 1 + depth(by_id[span["parent"]])

    spans = sorted(spans, key=lambda s: s["start"])
    steps = [s["start"] for s in spans if s["name"] == "speculation step"]
    if len(steps) > WATERFALL_STEPS:  # the first steps are enough to read; the request's span is cut at the edge
        spans = [s for s in spans if s["start"] < steps[WATERFALL_STEPS]]
    t0, t_end = spans[0]["start"], max(s["start"] for s in spans)
    colors = {"adaspec-coordinator": "tab:blue", "adaspec-verify": "tab:orange", "adaspec-draft": "tab:green"}
    fig, ax = plt.subplots(figsize=(11, 0.22 * len(spans) + 1.2))
    for row, span in enumerate(spans):
        start_ms, length_ms = (span["start"] - t0) / 1e6, (span["end"] - span["start"]) / 1e6
        ax.barh(row, max(length_ms, 0.05), left=start_ms, color=colors.get(span["service"], "gray"))
        ax.text(start_ms, row, "  " * depth(span) + span["name"], va="center", ha="right", fontsize=6)
    ax.set_xlim(0, (t_end - t0) / 1e6 * 1.05)
    ax.invert_yaxis()
    ax.set_yticks([])
    ax.set_xlabel("ms since the request's first span")
    ax.set_title("one request's trace (blue: coordinator, orange: verify, green: draft)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--profile", help="latency profile for the replicas (default: each measures a quick one)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "tracing.json")
    args = parser.parse_args()

    sink = OtlpReceiver()
    sink.start()
    runs = []
    try:
        order = [(r, traced) for r in range(args.rounds) for traced in ((False, True) if r % 2 == 0 else (True, False))]
        for r, traced in tqdm(order, desc="runs", unit="run"):
            runs.append({"round": r, **run(traced, sink, args)})
        time.sleep(1.5)  # the last batch of spans
    finally:
        sink.stop()

    ratios = {key: [next(x[key] for x in runs if x["round"] == r and x["traced"])
                    / next(x[key] for x in runs if x["round"] == r and not x["traced"]) for r in range(args.rounds)]
              for key in ("mean_tpot_ms", "wall_s")}
    traced_requests = sum(len(x["trace_ids"]) for x in runs if x["traced"])
    last = [x for x in runs if x["traced"]][-1]["trace_ids"][0]
    one_trace = [s for s in sink.spans if s["trace_id"] == last]
    results = {
        "rounds": args.rounds, "requests": args.requests, "concurrency": args.concurrency,
        "runs": [{k: v for k, v in x.items() if k != "trace_ids"} for x in runs],
        "ratio_on_off": {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "per_round": v}
                         for k, v in ratios.items()},
        "spans_per_request": sum(s["trace_id"] in {t for x in runs if x["traced"] for t in x["trace_ids"]}
                                 for s in sink.spans) / traced_requests,
        "spans_in_drawn_trace": len(one_trace),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    draw_waterfall(one_trace, args.out.with_name("trace-waterfall.png"))
    print(f"{'round':>5} {'tracing':>8} {'mean TPOT ms':>13} {'wall s':>8}")
    for x in runs:
        print(f"{x['round']:>5} {'on' if x['traced'] else 'off':>8} {x['mean_tpot_ms']:>13.2f} {x['wall_s']:>8.2f}")
    for key, r in results["ratio_on_off"].items():
        print(f"on/off {key}: {r['mean']:.3f} (rounds {', '.join(f'{v:.3f}' for v in r['per_round'])})")
    print(f"spans per request: {results['spans_per_request']:.1f}; wrote {args.out} and trace-waterfall.png")


if __name__ == "__main__":
    main()
