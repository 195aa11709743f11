"""`adaspec profile`: measure the latency profile of a target/draft pair on this machine and write it.

The full grid of forward shapes (`adaspec.engine.latency_probe.FULL`) is timed for both models; every
fifth shape is held out, the model is fitted on the rest and its prediction error on the held-out shapes
reported (median and p90 absolute %), then the model fitted on every shape is written with the samples.
Replicas load the file (`--profile`), refine it online and publish it with their load.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="target checkpoint directory (default: the bundled tiny-target)")
    parser.add_argument("--draft", help="draft checkpoint directory (default: the bundled tiny-draft with the "
                                        "bundled target; none with another target)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--kv-cache-mb", type=int, help="KV cache budget in MiB (bounds the largest shapes)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (as the replicas will run)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="measure decode and verify forwards as CUDA graphs (as replicas run with --cuda-graphs)")
    parser.add_argument("--grid", choices=["full", "quick"], default="full")
    parser.add_argument("--output", default="latency-profile.json", help="where to write the profile")


def run_profile(args) -> int:
    import torch

    from adaspec.engine import Engine, latency_probe
    from adaspec.speculation.latency_profile import LatencyModel, prediction_error

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(args.target, args.draft, device=args.device, cuda_graphs=args.cuda_graphs,
                    kv_cache_memory=args.kv_cache_mb * 2**20 if args.kv_cache_mb else None)
    grid = latency_probe.FULL if args.grid == "full" else latency_probe.QUICK
    total = len(grid.shapes(grid.verify_tokens, engine.max_model_len))
    total += len(grid.shapes(grid.draft_tokens, engine.max_model_len)) if engine.drafter else 0
    with tqdm(total=total, desc="profile", unit="shape") as bar:
        profile = engine.measure_profile(grid, progress=bar.update)
    errors = {}
    for name, samples in (("verify", profile.verify_samples), ("draft", profile.draft_samples)):
        held_out, train = samples[::5], [s for i, s in enumerate(samples) if i % 5]
        if held_out and len(train) >= 4:
            median, p90 = prediction_error(LatencyModel.fit(train), held_out)
            errors[name] = {"held_out_shapes": len(held_out), "median_abs_pct": round(median, 2),
                            "p90_abs_pct": round(p90, 2)}
    profile.meta.update(threads=torch.get_num_threads(), held_out_error=errors)
    profile.save(args.output)
    for name, model in (("t_v", profile.verify), ("t_d", profile.draft)):
        if model is not None:
            w = model.coef
            print(f"{name}(b, n, c) = {w[0]:.3f} + {w[1]:.4f} b + {w[2]:.4f} n + {w[3]:.4f} b c/1000 "
                  f"+ {w[4]:.4f} n c/1000  ms")
    for name, e in errors.items():
        print(f"{name}: held-out error on {e['held_out_shapes']} shapes: median {e['median_abs_pct']:.1f} %, "
              f"p90 {e['p90_abs_pct']:.1f} %")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

