"""The engine against vLLM on this CPU: same bundled pair, same prompts, plain and speculative decoding.

    python benchmarks/bench_vllm.py                       # batch 1 and 8, 128 new tokens, greedy, 5 rounds
    python benchmarks/bench_vllm.py --rounds 2 --vllm-python /path/to/venv/bin/python

vLLM is a baseline, never a dependency: it lives in a separate virtual environment (see
docs/benchmark-history.md, "Against vLLM on this CPU", for how it was installed) and runs as two
subprocesses of benchmarks/vllm_worker.py under that venv's interpreter, one `LLM` each: plain decoding on
the target, and speculative decoding with the draft model (`method: draft_model`, k=4). Each answers timing
requests over JSON lines, so the rounds are interleaved: in each round, at batch 1 and 8, vLLM plain, vLLM
draft k=4 and the engine's `none` and `fixed:2..6` run one after another, and each ratio compares runs of
the same round. The engine runs in this process on as many torch threads as vLLM's compute process uses
(vLLM's CPU backend binds its OpenMP threads and reserves a core for its scheduler; read from the
OMP_NUM_THREADS it set for its worker). Greedy outputs of both are compared token for token.
Prints a table, writes benchmarks/results/vllm.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_engine import against, held_out_prompts, plot, rate, time_engine  # the script directory is on sys.path
from tqdm import tqdm

from adaspec import Engine
from adaspec.engine.model_loader import BUNDLED_DRAFT, BUNDLED_TARGET

OUT_DIR = Path(__file__).resolve().parent / "results"
WORKER = Path(__file__).resolve().parent / "vllm_worker.py"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


class VllmWorker:
    """One vllm_worker.py subprocess (one vLLM `LLM`), driven over JSON lines."""

    def __init__(self, python: str, label: str, extra: list[str], log_dir: Path):
        venv = Path(os.path.abspath(python)).parent.parent  # not resolve(): the venv's python links outside it
        preload = [p for p in (TCMALLOC, str(venv / "lib" / "libiomp5.so")) if Path(p).exists()]
        env = dict(os.environ, LD_PRELOAD=":".join(preload))
        env.pop("OMP_NUM_THREADS", None)  # vLLM sets its own per worker from VLLM_CPU_OMP_THREADS_BIND
        self.label = label
        self.log = open(log_dir / f"vllm-{label}.log", "w")  # noqa: SIM115 - open while the worker lives
        # cwd outside the repository: its top-level `kernels/` would shadow the `kernels` package transformers probes
        self.proc = subprocess.Popen([python, str(WORKER), "--target", str(BUNDLED_TARGET), *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=tempfile.gettempdir())
        self.info: dict | None = None

    def ready(self) -> dict:
        if self.info is None:
            self.info = self._read()
        return self.info

    def run(self, prompts: list[list[int]], new_tokens: int) -> dict:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "new_tokens": new_tokens}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        drafted = reply["draft_tokens"]
        reply["acceptance"] = reply["accepted_tokens"] / drafted if drafted else None
        return reply

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"vLLM worker '{self.label}' exited (code {self.proc.wait()}); see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def vllm_threads(info: dict) -> int | None:
    """OpenMP threads of vLLM's model worker: the OMP_NUM_THREADS set for it, else the cores it is bound to."""
    counts = [int(p["omp_num_threads"]) if p.get("omp_num_threads") else len(p["cpus"])
              for p in info["processes"] if "Worker" in p["name"]]
    return min(counts) if counts else None


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Fraction of outputs identical token for token, and the mean length of the common prefix."""
    prefix = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        prefix.append(n)
    return {"identical": sum(x == y for x, y in zip(a, b)) / len(a), "outputs": len(a),
            "mean_common_prefix": statistics.mean(prefix)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", default="/work/vllm-venv/bin/python")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="the engine's fixed:K policies")
    parser.add_argument("--vllm-k", type=int, default=4, help="vLLM's num_speculative_tokens")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--batch1-prompts", type=int, default=3, help="batch-1 runs per method and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="engine torch threads (default: as many as vLLM's worker)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "vllm.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not Path(args.vllm_python).exists():
        sys.exit(f"no vLLM interpreter at {args.vllm_python}; see docs/benchmark-history.md for the install")

    log_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    print(f"starting vLLM workers (logs in {log_dir}) ...", flush=True)
    started = time.perf_counter()
    workers = {"vllm plain": VllmWorker(args.vllm_python, "plain", [], log_dir),
               f"vllm draft k={args.vllm_k}": VllmWorker(args.vllm_python, "draft",
                                                         ["--draft", str(BUNDLED_DRAFT), "--k", str(args.vllm_k)],
                                                         log_dir)}
    infos = {name: w.ready() for name, w in workers.items()}  # both start at once; timing begins after
    print(f"vLLM {infos['vllm plain']['vllm']} ready in {time.perf_counter() - started:.0f} s", flush=True)
    threads = args.threads or vllm_threads(infos["vllm plain"]) or torch.get_num_threads()
    torch.set_num_threads(threads)

    engine = Engine(max_spec_len=max(args.ks))
    prompts = held_out_prompts(engine.tokenizer, max(args.batches + [args.batch1_prompts]), args.prompt_tokens)
    methods = {name: (lambda p, w=w: w.run(p, args.new_tokens)) for name, w in workers.items()}
    for policy in ["none"] + [f"fixed:{k}" for k in args.ks]:
        methods[policy] = lambda p, policy=policy: time_engine(engine, p, policy, args.new_tokens)
    time_engine(engine, prompts[:2], "fixed:4", 16)  # warm-up

    runs: dict[tuple[int, str], list[list[dict]]] = {}  # per (batch, method): per round, its runs
    for round_ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        for batch in args.batches:
            groups = [[p] for p in prompts[: args.batch1_prompts]] if batch == 1 else [prompts[:batch]]
            for name, method in methods.items():
                runs.setdefault((batch, name), []).append([method(group) for group in groups])
    for worker in workers.values():
        worker.close()

    results, checks = [], []
    for batch in args.batches:
        rows = {name: runs[(batch, name)] for name in methods}
        rates = {name: [rate(r) for r in rounds] for name, rounds in rows.items()}
        outputs = {name: [ids for s in rounds[0] for ids in s["token_ids"]] for name, rounds in rows.items()}
        for name, rounds in rows.items():
            samples = [s for r in rounds for s in r]
            acceptance = [s["acceptance"] for s in samples if s["acceptance"] is not None]
            row = {"batch": batch, "method": name, "tokens_per_s": statistics.median(rates[name]),
                   "round_rates": rates[name], "acceptance": statistics.mean(acceptance) if acceptance else None}
            for key, baseline in (("vs_vllm_plain", "vllm plain"), ("vs_vllm_draft", f"vllm draft k={args.vllm_k}")):
                row[key], row[key + "_range"] = against(rates[name], rates[baseline])
            # greedy output of every round against vLLM plain's first round (fp32 both)
            row["vs_vllm_plain_outputs"] = agreement([ids for s in samples for ids in s["token_ids"]],
                                                     outputs["vllm plain"] * len(rounds))
            results.append(row)
        best = max((f"fixed:{k}" for k in args.ks), key=lambda n: statistics.median(rates[n]))
        for r in results:
            if r["batch"] == batch and r["method"] == best:
                r["best_fixed"] = True
        checks.append({"batch": batch, "best_fixed": best,
                       **{f"{a} vs {b}": agreement(outputs[a], outputs[b])
                          for a, b in (("none", "vllm plain"), (f"vllm draft k={args.vllm_k}", "vllm plain"),
                                       ("fixed:4", "none"), (f"vllm draft k={args.vllm_k}", "none"))}})

    print_table(results, args.vllm_k)
    for check in checks:
        print(f"batch {check['batch']}: best fixed:K = {check['best_fixed']}; outputs identical (first round): "
              + ", ".join(f"{k} {v['identical']:.0%}" for k, v in check.items() if isinstance(v, dict)))
    processes = infos["vllm plain"]["processes"]
    meta = {"new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens, "rounds": args.rounds,
            "batch1_prompts": args.batch1_prompts, "greedy": True, "dtype": "float32",
            "engine_torch_threads": torch.get_num_threads(), "engine_device": str(engine.device),
            "vllm_version": infos["vllm plain"]["vllm"], "vllm_torch": infos["vllm plain"]["torch"],
            "vllm_omp_threads": vllm_threads(infos["vllm plain"]), "vllm_processes": processes,
            "vllm_omp_threads_bind": infos["vllm plain"]["omp_threads_bind"] or "auto (default)",
            "ld_preload": infos["vllm plain"]["ld_preload"], "vllm_speculative_k": args.vllm_k,
            "torch": torch.__version__, "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({"meta": meta, "agreement": checks, "results": results}, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), "vllm", f"vLLM {meta['vllm_version']} (gray) vs engine (blue)",
         f"bundled pair, fp32, greedy, {meta['new_tokens']} new tokens, {meta['rounds']} rounds; engine "
         f"{meta['engine_torch_threads']} thread(s), vLLM {meta['vllm_omp_threads']} OMP thread(s)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def print_table(results: list[dict], vllm_k: int) -> None:
    print(f"\n{'batch':>5}  {'method':<16} {'tok/s':>7} {'vs vLLM plain (range)':>22} "
          f"{f'vs vLLM k={vllm_k} (range)':>22} {'accept':>7}")
    for r in results:
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        vs = [f"{r[k]:.2f}x ({r[k + '_range'][0]:.2f}-{r[k + '_range'][1]:.2f})"
              for k in ("vs_vllm_plain", "vs_vllm_draft")]
        name = r["method"] + (" *" if r.get("best_fixed") else "")
        print(f"{r['batch']:>5}  {name:<16} {r['tokens_per_s']:>7.1f} {vs[0]:>22} {vs[1]:>22} {acc:>7}")
    print("  * the engine's best fixed:K at this batch size (highest median)")


if __name__ == "__main__":
    main()
