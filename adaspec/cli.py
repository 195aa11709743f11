"""The `adaspec` command line."""

from __future__ import annotations

import argparse
import sys
import time

DEMO_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\nimport sys\n\n\ndef main(argv=None):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "    try:\n        with open(path) as f:\n            data = f.read()\n    except OSError:\n",
    "def parse_args(args):\n    parser = argparse.ArgumentParser(description=__doc__)\n",
    "for key, value in sorted(mapping.items()):\n",
    "    def __repr__(self):\n        return '%s(%r)' % (",
    "if __name__ == '__main__':\n",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaspec", description="Load- and SLO-adaptive speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for one prompt with the in-process engine")
    gen.add_argument("prompt")
    add_engine_args(gen)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)

    demo = sub.add_parser("demo", help="run the bundled pair with and without speculation and print a summary")
    add_engine_args(demo)
    demo.add_argument("--max-tokens", type=int, default=96)

    args = parser.parse_args(argv)
    try:
        return {"generate": cmd_generate, "demo": cmd_demo}[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"adaspec: error: {error}", file=sys.stderr)
        return 2


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="target checkpoint directory (default: the bundled tiny-target)")
    parser.add_argument("--draft", help="draft checkpoint directory (default: the bundled tiny-draft)")
    parser.add_argument("--policy", default="fixed:4", help="none | fixed:K")


def make_engine(args):
    from adaspec import Engine

    return Engine(args.target, args.draft)


def cmd_generate(args) -> int:
    from adaspec import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
    engine = make_engine(args)
    out = engine.generate([args.prompt], params, policy=args.policy)[0]
    print(args.prompt + out.text)
    stats = out.stats
    print(f"\n[{len(out.token_ids)} tokens, finish: {out.finish_reason}, steps: {stats['steps']}, "
          f"acceptance: {stats['acceptance_rate']:.2f}, mean k: {stats['mean_k']:.2f}]", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from adaspec import SamplingParams

    engine = make_engine(args)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(DEMO_PROMPTS[:2], SamplingParams(max_tokens=8), policy=args.policy)  # warm-up
    print(f"{'policy':<10} {'batch':>5} {'tokens/s':>9} {'acceptance':>11} {'mean k':>7} {'speed-up':>9}")
    for batch in (1, len(DEMO_PROMPTS)):
        baseline = None
        for policy in ("none", args.policy):
            prompts = DEMO_PROMPTS[:batch]
            start = time.perf_counter()
            outs = engine.generate(prompts, params, policy=policy, use_tqdm=False)
            rate = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)
            baseline = baseline or rate
            drafted = sum(o.stats["draft_tokens"] for o in outs)
            acceptance = sum(o.stats["accepted_tokens"] for o in outs) / drafted if drafted else 0.0
            mean_k = sum(o.stats["mean_k"] for o in outs) / len(outs)
            print(f"{policy:<10} {batch:>5} {rate:>9.1f} {acceptance:>11.2f} {mean_k:>7.2f} {rate / baseline:>8.2f}x")
    print("\n" + DEMO_PROMPTS[0] + engine.generate(DEMO_PROMPTS[:1], params, policy=args.policy)[0].text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
