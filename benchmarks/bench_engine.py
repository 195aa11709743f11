"""Engine throughput on the bundled pair: `none` and `fixed:1..8` against transformers baselines.

    python benchmarks/bench_engine.py            # batch 1 and 8, 128 new tokens, greedy
    python benchmarks/bench_engine.py --rounds 1 --max-k 4
    python benchmarks/bench_engine.py --device cuda --cuda-graphs both   # + rows `fixed:4+graphs` & co.

Baselines run in the same process, interleaved round by round with the engine (timings on shared
machines drift by ±15-30 % between runs): `transformers` `generate` on the target alone, and
assisted generation (`assistant_model=` the draft; transformers supports it at batch 1 only, so at
batch 8 the prompts run one after another), on the engine's device and in its dtype. Prints a table, writes
JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from adaspec import Engine, SamplingParams
from adaspec.engine.model_loader import (
    BUNDLED_DRAFT,
    BUNDLED_TARGET,
    MODELS_DIR,
    default_device,
    default_dtype,
    default_kv_budget,
)

OUT_DIR = Path(__file__).resolve().parent / "results"


def held_out_prompts(tokenizer, count: int, prompt_tokens: int) -> list[list[int]]:
    """Prompt windows from the standard-library files the bundled pair never trained on."""
    files = json.loads((MODELS_DIR / "TRAINING.json").read_text())["held_out_files"]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ids = []
    for name in files:
        path = stdlib / name
        if path.is_file():
            ids += tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"]
    if len(ids) < count * prompt_tokens * 3:
        sys.exit("held-out files are missing on this Python; run on the Python the models were trained with")
    stride = len(ids) // count
    return [ids[i * stride : i * stride + prompt_tokens] for i in range(count)]


def clock(device: torch.device) -> float:
    """perf_counter once the work queued on `device` has run (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_engine(engine: Engine, prompts, policy: str, new_tokens: int, fused: bool = True) -> dict:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    runners = [engine.target_runner, engine.drafter.runner]
    forwards = [runner.fused for runner in runners]
    if not fused:
        for runner in runners:
            runner.fused = None
    try:
        start = clock(engine.device)
        outs = engine.generate(prompts, params, policy=policy)
        elapsed = clock(engine.device) - start
    finally:
        for runner, forward in zip(runners, forwards):
            runner.fused = forward
    drafted = sum(o.stats["draft_tokens"] for o in outs)
    return {
        "seconds": elapsed,
        "tokens": sum(len(o.token_ids) for o in outs),
        "token_ids": [list(o.token_ids) for o in outs],
        "acceptance": sum(o.stats["accepted_tokens"] for o in outs) / drafted if drafted else None,
        "tokens_per_step": sum(len(o.token_ids) - 1 for o in outs) / max(1, sum(o.stats["steps"] for o in outs)),
    }


@torch.inference_mode()
def time_hf(target, prompts, new_tokens: int, assistant=None) -> dict:
    """HF generate on padded batches (left padding); with an assistant, one prompt at a time."""
    groups = [[p] for p in prompts] if assistant is not None else [prompts]
    tokens, start = 0, clock(target.device)
    for group in groups:
        width = max(map(len, group))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in group], device=target.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=target.device)
        out = target.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0, assistant_model=assistant)
        tokens += (out.shape[1] - width) * len(group)
    return {"seconds": clock(target.device) - start, "tokens": tokens, "acceptance": None, "tokens_per_step": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-k", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--batch1-prompts", type=int, default=3, help="batch-1 runs per method and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--general-forward", nargs="*",
                        help="policies also run on transformers' forward in place of the fused one "
                             "(default: none and fixed:4, or fixed:MAX_K below 4)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "engine.json")
    parser.add_argument("--device", help="the engine's and the baselines' device (default: the engine's default)")
    parser.add_argument("--cuda-graphs", choices=["off", "on", "both"], default="off",
                        help="the engine with CUDA graphs (rows `...+graphs`; no `[hf forward]` rows with `on`); "
                             "both: with and without, interleaved in the same rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    usual_k = f"fixed:{min(4, args.max_k)}"  # the policy of the warm-up and the `[hf forward]` rows
    if args.general_forward is None:
        args.general_forward = ["none", usual_k]

    engines = build_engines(args.max_k, args.device, args.cuda_graphs)
    engine = next(iter(engines.values()))
    dtype = default_dtype(engine.device)  # the baselines in the engine's dtype (bf16 on CUDA), for a fair race
    target = AutoModelForCausalLM.from_pretrained(BUNDLED_TARGET, dtype=dtype).eval().to(engine.device)
    draft = AutoModelForCausalLM.from_pretrained(BUNDLED_DRAFT, dtype=dtype).eval().to(engine.device)
    for model in (target, draft):
        model.generation_config.eos_token_id = None  # exactly new_tokens tokens, like ignore_eos
    prompts = held_out_prompts(engine.tokenizer, max(args.batches + [args.batch1_prompts]), args.prompt_tokens)

    methods = {"hf generate": lambda p: time_hf(target, p, args.new_tokens),
               "hf assisted": lambda p: time_hf(target, p, args.new_tokens, assistant=draft)}
    for policy in ["none"] + [f"fixed:{k}" for k in range(1, args.max_k + 1)]:
        for suffix, eng in engines.items():  # with and without graphs side by side, in the same rounds
            methods[policy + suffix] = lambda p, policy=policy, eng=eng: time_engine(eng, p, policy, args.new_tokens)
    if "" in engines:  # graphs replay the fused forward only: transformers' forward runs on the plain engine
        for policy in args.general_forward:  # the engine on transformers' own forward: what the fused one gains
            methods[f"{policy} [hf forward]"] = lambda p, policy=policy: time_engine(engines[""], p, policy,
                                                                                     args.new_tokens, fused=False)

    runs: dict[tuple[int, str], list[list[dict]]] = {}  # per (batch, method): per round, its runs
    for eng in engines.values():
        time_engine(eng, prompts[:2], usual_k, 16)  # warm-up
    jobs = [(r, b, name) for r in range(args.rounds) for b in args.batches for name in methods]
    for round_, batch, name in tqdm(jobs, desc="benchmark", unit="run"):
        groups = [[p] for p in prompts[: args.batch1_prompts]] if batch == 1 else [prompts[:batch]]
        rounds = runs.setdefault((batch, name), [])
        if len(rounds) == round_:
            rounds.append([])
        rounds[round_] += [methods[name](group) for group in groups]

    results = []
    for (batch, name), rounds in runs.items():
        samples = [s for r in rounds for s in r]
        acceptance = [s["acceptance"] for s in samples if s["acceptance"] is not None]
        per_step = [s["tokens_per_step"] for s in samples if s["tokens_per_step"] is not None]
        rates = [rate(r) for r in rounds]
        results.append({"batch": batch, "method": name, "tokens_per_s": statistics.median(rates), "round_rates": rates,
                        "acceptance": statistics.mean(acceptance) if acceptance else None,
                        "tokens_per_step": statistics.mean(per_step) if per_step else None})
    for batch in args.batches:
        rows = [r for r in results if r["batch"] == batch]
        base = {r["method"]: r["round_rates"] for r in rows}
        for r in rows:  # each round against the baselines of the same round: the spread is the round-to-round one
            for key, baseline in (("vs_hf_generate", "hf generate"), ("vs_hf_assisted", "hf assisted")):
                r[key], r[key + "_range"] = against(r["round_rates"], base[baseline])
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens, "rounds": args.rounds,
            "torch_threads": torch.get_num_threads(), "device": str(engine.device), "greedy": True,
            "cuda_graphs": args.cuda_graphs}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), "hf", "bundled pair, greedy")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def build_engines(max_k: int, device: str | None, cuda_graphs: str) -> dict[str, Engine]:
    """The engines to time, by the suffix of their rows: "" plain, "+graphs" with CUDA graphs."""
    suffixes = {"off": [""], "on": ["+graphs"], "both": ["", "+graphs"]}[cuda_graphs]
    device = torch.device(device) if device else default_device()
    # each engine's KV cache takes its share of the memory one engine would take (80 % of free memory on CUDA)
    kv_bytes = default_kv_budget(device) // len(suffixes)
    return {suffix: Engine(max_spec_len=max_k, device=device, kv_cache_memory=kv_bytes, cuda_graphs=bool(suffix))
            for suffix in suffixes}


def rate(runs: list[dict]) -> float:
    """Output tokens per second over a round's runs."""
    return sum(s["tokens"] for s in runs) / sum(s["seconds"] for s in runs)


def against(mine: list[float], theirs: list[float]) -> tuple[float, list[float]]:
    """Each round's rate over the baseline's rate in the same round: (median, [min, max]) over rounds."""
    ratios = [a / b for a, b in zip(mine, theirs)]
    return statistics.median(ratios), [min(ratios), max(ratios)]


def print_table(results: list[dict]) -> None:
    print(f"\n{'batch':>5}  {'method':<22} {'tok/s':>7} {'vs generate (range)':>20} {'vs assisted (range)':>20} "
          f"{'accept':>7} {'tok/step':>9}")
    for r in results:
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] is not None else "-"
        vs = [f"{r[k]:.2f}x ({r[k + '_range'][0]:.2f}-{r[k + '_range'][1]:.2f})"
              for k in ("vs_hf_generate", "vs_hf_assisted")]
        print(f"{r['batch']:>5}  {r['method']:<22} {r['tokens_per_s']:>7.1f} {vs[0]:>20} {vs[1]:>20} {acc:>7} {tps:>9}")


def plot(results: list[dict], path: Path, baseline_prefix: str, title: str, note: str | None = None) -> None:
    """Bars of tokens/s per method and batch (baselines, named `baseline_prefix`..., in gray), with each method's
    min-max over rounds; a row marked `best_fixed` gets a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in results})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in results if r["batch"] == batch]
        colors = ["tab:gray" if r["method"].startswith(baseline_prefix) else "tab:blue" for r in rows]
        rates = [r["tokens_per_s"] for r in rows]
        bars = ax.bar([r["method"] + (" *" if r.get("best_fixed") else "") for r in rows], rates, color=colors)
        errors = [[rate - min(r["round_rates"]) for rate, r in zip(rates, rows)],
                  [max(r["round_rates"]) - rate for rate, r in zip(rates, rows)]]
        ax.errorbar([b.get_x() + b.get_width() / 2 for b in bars], rates, yerr=errors, fmt="none", ecolor="black",
                    capsize=3, linewidth=1)
        ax.set_title(f"{title}, batch {batch}")
        ax.set_ylabel("output tokens / s (median, min-max over rounds)")
        ax.tick_params(axis="x", rotation=60)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
