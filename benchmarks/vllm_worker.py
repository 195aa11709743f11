"""vLLM side of bench_vllm.py: run by the interpreter of a separate vLLM venv, never imported by the project.

    /work/vllm-venv/bin/python benchmarks/vllm_worker.py --target DIR [--draft DIR --k 4]

Loads one vLLM `LLM` (plain decoding on the target, or with `--draft` speculative decoding with the draft
model), then answers JSON lines on stdin, one reply line each on stdout:

    {"prompts": [[token ids], ...], "new_tokens": 128}
      -> {"seconds": s, "tokens": n, "token_ids": [[...], ...], "draft_tokens": d, "accepted_tokens": a}

Greedy, ignore_eos. The first reply line is {"ready": true, ...} once the model is loaded and warmed up.
vLLM's own logging goes to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def spec_counters(llm) -> tuple[int, int]:
    """vLLM's cumulative draft and accepted token counters (0, 0 where it keeps none)."""
    drafted = accepted = 0
    try:
        metrics = llm.get_metrics()
    except Exception:  # noqa: BLE001 - an older vLLM without get_metrics: acceptance unknown
        return 0, 0
    for metric in metrics:
        name = getattr(metric, "name", "")
        if name == "vllm:spec_decode_num_draft_tokens":
            drafted = int(metric.value)
        elif name == "vllm:spec_decode_num_accepted_tokens":
            accepted = int(metric.value)
    return drafted, accepted


def compute_processes() -> list[dict]:
    """vLLM's child processes: name, CPU affinity and the OMP_NUM_THREADS vLLM set for each."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            env = child.environ()
            found.append({"pid": child.pid, "name": child.name(), "cpus": sorted(child.cpu_affinity()),
                          "omp_num_threads": env.get("OMP_NUM_THREADS"), "threads": child.num_threads()})
        except (psutil.Error, OSError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--memory-fraction", type=float, default=0.1,
                        help="gpu_memory_utilization, which on CPU is the share of the NUMA node's memory it takes")
    args = parser.parse_args()

    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything vLLM prints goes to stderr

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs = {"model": args.target, "dtype": "float32", "max_model_len": args.max_model_len, "seed": 0,
              "gpu_memory_utilization": args.memory_fraction, "disable_log_stats": False}
    if args.draft:
        kwargs["speculative_config"] = {"method": "draft_model", "model": args.draft,
                                        "num_speculative_tokens": args.k}
    llm = LLM(**kwargs)

    def run(prompts: list[list[int]], new_tokens: int) -> dict:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        before = spec_counters(llm)
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        after = spec_counters(llm)
        token_ids = [list(o.outputs[0].token_ids) for o in outs]
        return {"seconds": seconds, "tokens": sum(map(len, token_ids)), "token_ids": token_ids,
                "draft_tokens": after[0] - before[0], "accepted_tokens": after[1] - before[1]}

    run([[1, 2, 3, 4]] * 2, 16)  # warm-up: the first batches compile
    protocol.write(json.dumps({"ready": True, "vllm": vllm.__version__, "torch": torch.__version__,
                               "processes": compute_processes(),
                               "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                               "ld_preload": os.environ.get("LD_PRELOAD")}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        protocol.write(json.dumps(run(request["prompts"], request["new_tokens"])) + "\n")


if __name__ == "__main__":
    main()
