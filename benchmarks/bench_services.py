"""The service path (SDK -> coordinator -> draft + verify processes over gRPC) against the in-process engine.

    python benchmarks/bench_services.py                  # concurrency 1 and 8, fixed:4 and none, greedy
    python benchmarks/bench_services.py --rounds 3 --policies fixed:4

Same bundled pair, same held-out prompts, same policy, greedy, 128 new tokens. The in-process engine
runs each batch of `concurrency` prompts in one `generate` call, on 2 torch threads (the target) and
again on 1 (what each model process has: the part of the gap that is the core split); the service path
runs `concurrency` concurrent streams through `adaspec.AsyncClient` against `adaspec up`'s stack on
loopback (one verify and one draft process, one torch thread each: the same two cores). Rounds
alternate the two paths. Per-step overhead is a request's wall time per verification step over the
service path minus the engine's time per step at the same concurrency (on 2 threads, and on 1: what each model
process has). CPU time per session-step: each service process's (user + system, from /proc: the coordinator is all
front; the verify and draft processes are front plus engine) and the benchmark client's, over the service runs,
divided by the session-steps they served. Prints a table, writes `benchmarks/results/services.{json,png}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bench_engine import held_out_prompts  # the script directory is on sys.path
from tqdm import tqdm

from adaspec import AsyncClient, Engine, SamplingParams
from adaspec.stack import Stack, StackConfig
from adaspec.workload import format_table

OUT_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = [
    ("concurrency", "conc"), ("policy", "policy"), ("engine_tok_s", "engine tok/s", ".1f"),
    ("engine_1t_tok_s", "1-core engine", ".1f"), ("service_tok_s", "service tok/s", ".1f"), ("ratio", "ratio", ".2f"),
    ("ratio_1t", "vs 1-core", ".2f"), ("engine_ms_per_step", "engine ms/step", ".2f"),
    ("service_ms_per_step", "service ms/step", ".2f"), ("overhead_ms_per_step", "overhead ms", ".2f"),
    ("overhead_1t_ms_per_step", "vs 1-core", ".2f"), ("cpu_ms_coordinator", "coord CPU ms", ".2f"),
    ("cpu_ms_verify", "verify CPU ms", ".2f"), ("cpu_ms_draft", "draft CPU ms", ".2f"),
    ("cpu_ms_client", "client CPU ms", ".2f"),
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; fields 14 and 15 of its stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_engine(engine: Engine, prompts: list[list[int]], policy: str, new_tokens: int, threads: int) -> dict:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        outs = engine.generate(prompts, params, policy=policy)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(default_threads)
    steps = max(o.stats["steps"] for o in outs) + 1  # the batch steps together; +1 for the prefill step
    return {"seconds": seconds, "tokens": sum(len(o.token_ids) for o in outs), "ms_per_step": seconds * 1e3 / steps,
            "token_ids": [o.token_ids for o in outs]}


async def run_service(address: str, prompts: list[list[int]], policy: str, new_tokens: int) -> dict:
    async with AsyncClient(address, timeout=600) as client:
        async def one(prompt):
            sent = time.perf_counter()
            out = await client.generate(prompt, max_tokens=new_tokens, temperature=0, ignore_eos=True, policy=policy)
            return out, time.perf_counter() - sent

        start = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": sum(len(out.token_ids) for out, _ in results),
        "ms_per_step": statistics.mean(wall * 1e3 / (out.stats.steps + 1) for out, wall in results),
        "session_steps": sum(out.stats.steps + 1 for out, _ in results),
        "token_ids": [out.token_ids for out, _ in results],
    }


def run_service_measured(stack: Stack, prompts: list[list[int]], policy: str, new_tokens: int) -> dict:
    """`run_service`, with the CPU milliseconds per session-step of each service process and of this client."""
    pids = {name.split("-")[0]: p.popen.pid for name, p in stack.processes.items()}
    before, client_before = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.process_time()
    result = asyncio.run(run_service(stack.address, prompts, policy, new_tokens))
    steps = result["session_steps"]
    for name, pid in pids.items():
        result[f"cpu_ms_{name}"] = (cpu_seconds(pid) - before[name]) * 1e3 / steps
    result["cpu_ms_client"] = (time.process_time() - client_before) * 1e3 / steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--policies", nargs="+", default=["fixed:4", "none"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    args = parser.parse_args()

    engine = Engine()
    prompts = held_out_prompts(engine.tokenizer, max(args.concurrency), args.prompt_tokens)
    cases = [(c, p) for c in args.concurrency for p in args.policies]
    paths = ("engine", "engine_1t", "service")
    engine_threads = torch.get_num_threads()
    samples = {(c, p, path): [] for c, p in cases for path in paths}
    with Stack(StackConfig(threads=args.threads)) as stack:
        asyncio.run(run_service(stack.address, prompts[:2], "fixed:4", 8))  # warm-up
        run_engine(engine, prompts[:2], "fixed:4", 8, engine_threads)
        with tqdm(total=args.rounds * len(cases) * len(paths), desc="bench services", unit="run") as bar:
            for _ in range(args.rounds):
                for c, policy in cases:
                    batch = prompts[:c]
                    ours = run_service_measured(stack, batch, policy, args.new_tokens)
                    bar.update()
                    theirs = run_engine(engine, batch, policy, args.new_tokens, engine_threads)
                    bar.update()
                    one_core = run_engine(engine, batch, policy, args.new_tokens, 1)
                    bar.update()
                    assert ours.pop("token_ids") == theirs.pop("token_ids"), "service output differs from the engine"
                    one_core.pop("token_ids")
                    samples[(c, policy, "service")].append(ours)
                    samples[(c, policy, "engine")].append(theirs)
                    samples[(c, policy, "engine_1t")].append(one_core)

    rows = []
    for c, policy in cases:
        med = {path: {key: statistics.median(s[key] for s in samples[(c, policy, path)])
                      for key in ("seconds", "tokens", "ms_per_step")} for path in paths}
        cpu = {key: statistics.median(s[key] for s in samples[(c, policy, "service")])
               for key in samples[(c, policy, "service")][0] if key.startswith("cpu_ms_")}
        engine_tps = med["engine"]["tokens"] / med["engine"]["seconds"]
        one_core_tps = med["engine_1t"]["tokens"] / med["engine_1t"]["seconds"]
        service_tps = med["service"]["tokens"] / med["service"]["seconds"]
        rows.append({
            "concurrency": c, "policy": policy, "engine_threads": engine_threads, "engine_tok_s": engine_tps,
            "engine_1t_tok_s": one_core_tps, "service_tok_s": service_tps, "ratio": service_tps / engine_tps,
            "ratio_1t": service_tps / one_core_tps, "engine_ms_per_step": med["engine"]["ms_per_step"],
            "service_ms_per_step": med["service"]["ms_per_step"],
            "overhead_ms_per_step": med["service"]["ms_per_step"] - med["engine"]["ms_per_step"],
            "overhead_1t_ms_per_step": med["service"]["ms_per_step"] - med["engine_1t"]["ms_per_step"],
            "engine_1t_ms_per_step": med["engine_1t"]["ms_per_step"], **cpu,
        })

    print(format_table(rows, COLUMNS))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "services.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    plot(rows, OUT_DIR / "services.png")
    print(f"wrote {OUT_DIR / 'services.json'} and services.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['policy']}\nconc {r['concurrency']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    engine_label = f"in-process engine ({rows[0]['engine_threads']} threads)"
    ax.bar([i - 0.27 for i in x], [r["engine_tok_s"] for r in rows], 0.27, label=engine_label)
    ax.bar(list(x), [r["engine_1t_tok_s"] for r in rows], 0.27, label="in-process engine (1 thread)")
    ax.bar([i + 0.27 for i in x], [r["service_tok_s"] for r in rows], 0.27, label="service path (gRPC)")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['ratio']:.2f}x", (i + 0.27, r["service_tok_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("output tokens/s")
    ax.set_title("Service path vs in-process engine (bundled pair, greedy, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
