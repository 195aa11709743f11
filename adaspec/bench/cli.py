"""`adaspec bench`'s options (named as `vllm bench serve` names them where it has them) and the command."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from typing import Any

from adaspec.bench.backend import BACKENDS
from adaspec.bench.config import TAG, BenchConfig, server_policy
from adaspec.bench.datasets import DATASETS
from adaspec.bench.slo import parse_goodput, parse_slo_class


def _argument(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse `type` that reports `parse`'s ValueError as the option's error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = name
    return convert


def _number(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise ValueError(f"expected {what}, got {text!r}")
        return value
    return _argument(parse, what)


POSITIVE_INT = _number(int, lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = _number(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE = _number(float, lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _number(float, lambda v: 0 <= v < math.inf, "a number >= 0")
MILLISECONDS = _number(float, lambda v: 0 < v < math.inf, "a number of milliseconds > 0")
RATE = _number(float, lambda v: v > 0, "a request rate > 0 (req/s) or inf")


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def _policies(text: str) -> list[str]:
    policies = [p.strip() for p in text.split(",")]
    if not all(map(server_policy, policies)) or len(set(policies)) != len(policies):
        raise ValueError(f"expected distinct comma-separated policies such as none,fixed:4 (a second copy of one as "
                         f"POLICY{TAG}TAG, e.g. none,none{TAG}2), got {text!r}")
    return policies


class _GoodputAction(argparse.Action):
    """`--goodput ttft:MS tpot:MS [e2el:MS]` -> {metric: ms}; malformed, an argparse error."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            setattr(namespace, self.dest, parse_goodput(values))
        except ValueError as error:
            parser.error(str(error))


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where")
    where.add_argument("--target", type=_argument(_host_port, "HOST:PORT"),
                       help="HOST:PORT of a running coordinator; without it the bench starts a stack on loopback "
                            "(the options below) and stops it at the end")
    where.add_argument("--backend", choices=sorted(BACKENDS), default="adaspec",
                       help="adaspec: the coordinator's gRPC API (--target); openai: any OpenAI-compatible server's "
                            "/v1/completions (--base-url; without it, the HTTP API of the stack the bench starts)")
    where.add_argument("--base-url", help="the openai backend's server, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--model", help="the openai backend's model name (default: the server's first)")
    where.add_argument("--verify-replicas", type=POSITIVE_INT, default=1)
    where.add_argument("--draft-replicas", type=POSITIVE_INT, default=1)
    where.add_argument("--redis", help="'spawn' (start a local redis-server) or a Redis URL; default: in-process store")
    where.add_argument("--target-model", help="target checkpoint directory (default: the bundled tiny-target)")
    where.add_argument("--draft-model", help="draft checkpoint directory (default: the bundled tiny-draft)")
    where.add_argument("--threads", type=POSITIVE_INT, help="torch threads per model process")
    where.add_argument("--profile", help="latency profile for the replicas (`adaspec profile`; default: each "
                                         "measures a quick one at start)")
    where.add_argument("--log-dir", help="service logs (default: a temporary directory)")
    where.add_argument("--replica-args", type=shlex.split, default=[], metavar="ARGS",
                       help="more `adaspec serve verify` / `draft` arguments for every replica of the stack, one "
                            "shell-quoted string, e.g. --replica-args=--cuda-graphs (with '=': the value starts "
                            "with a dash)")

    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=RATE, nargs="+", default=[math.inf],
                      help="request rates (req/s) to run, e.g. 1 2 4 8 inf; inf sends every request at once")
    load.add_argument("--burstiness", type=POSITIVE, default=1.0,
                      help="gamma shape of the inter-arrival times (1: Poisson; lower: burstier); without --trace")
    load.add_argument("--max-concurrency", type=POSITIVE_INT, help="at most this many requests in flight")
    load.add_argument("--num-requests", type=POSITIVE_INT, default=100, help="requests per (policy, rate) run")
    load.add_argument("--warmup-requests", type=NON_NEGATIVE_INT, default=1,
                      help="unmeasured requests sent before each run")
    load.add_argument("--seed", type=int, default=0, help="arrivals, trace window, prompts, SLO classes")

    work = parser.add_argument_group("workload")
    work.add_argument("--trace", help="azure-code | azure-conv | a CSV with TIMESTAMP,ContextTokens,GeneratedTokens; "
                                      "without it: gamma arrivals and fixed sizes")
    work.add_argument("--trace-start", type=NON_NEGATIVE, help="with --trace: the window starts at the first row at or "
                                                                "after this many seconds into the trace (default: a "
                                                                "row chosen by --seed)")
    work.add_argument("--input-len", type=POSITIVE_INT, default=256, help="prompt tokens, without --trace")
    work.add_argument("--output-len", type=POSITIVE_INT, default=128, help="output tokens, without --trace")
    work.add_argument("--max-prompt-tokens", type=POSITIVE_INT, default=256, help="trace prompt sizes map into this")
    work.add_argument("--max-output-tokens", type=POSITIVE_INT, default=128, help="trace output sizes map into this")
    work.add_argument("--min-output-tokens", type=POSITIVE_INT, default=16, help="trace output sizes start here")
    work.add_argument("--dataset", choices=DATASETS, default="code",
                      help="prompt text: held-out Python source (the bundled models' domain) or Spec-Bench turns")
    work.add_argument("--tokenizer", help="checkpoint directory whose tokenizer.json sizes the prompts "
                                          "(default: --target-model, else the bundled target)")
    work.add_argument("--temperature", type=NON_NEGATIVE, default=0.0)
    work.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                      help="generate every requested token (default: on)")

    slo = parser.add_argument_group("policies and SLOs")
    slo.add_argument("--policies", type=_argument(_policies, "policies"), default=["none", "fixed:4"],
                     help="comma-separated policies, passed to the server as they are (default: none,fixed:4); "
                          f"POLICY{TAG}TAG runs POLICY under a name of its own: the baseline again (none,none{TAG}2) "
                          "is an A/A pair, whose ratio shows how far two runs of one policy differ on the machine")
    slo.add_argument("--baseline", metavar="POLICY",
                     help="the policy of --policies that every run's mean TPOT is compared with, in the same round and "
                          "at the same rate (default: the first)")
    slo.add_argument("--slo-ttft-ms", type=MILLISECONDS, help="TTFT SLO sent with every request")
    slo.add_argument("--slo-tpot-ms", type=MILLISECONDS, help="TPOT SLO sent with every request")
    slo.add_argument("--slo-class", type=_argument(parse_slo_class, "SLO class"), action="append", default=[],
                     metavar="NAME:TPOT_MS[:TTFT_MS[:FRACTION]]",
                     help="an SLO class (repeatable): each request draws a class by the fractions (default equal) "
                          "and carries its SLO; a class without TTFT_MS takes --slo-ttft-ms")
    slo.add_argument("--goodput", action=_GoodputAction, nargs="+", metavar="KEY:MS",
                     help="vLLM's goodput limits, KEY in ttft, tpot, e2el (default: each request's own SLO)")

    rep = parser.add_argument_group("repetition and output")
    rep.add_argument("--rounds", type=POSITIVE_INT, default=1,
                     help="repeat every (rate, policy) run; the policy order rotates from round to round")
    rep.add_argument("--alternate-rates", action="store_true", help="reverse the rate order every other round")
    rep.add_argument("--request-timeout", type=POSITIVE, default=600.0, help="seconds per request")
    rep.add_argument("--max-retries", type=NON_NEGATIVE_INT, default=3,
                     help="SDK retries of a request turned away before its first token")
    rep.add_argument("--output-json", default="bench-results/bench.json",
                     help="results; the Markdown table (.md) and the plot (.png) go beside it")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The bench's configuration from `adaspec bench`'s arguments; raises ValueError for a bad combination."""
    return BenchConfig(
        policies=args.policies, request_rates=args.request_rate, burstiness=args.burstiness,
        max_concurrency=args.max_concurrency, num_requests=args.num_requests, warmup_requests=args.warmup_requests,
        seed=args.seed, trace=args.trace, input_len=args.input_len, output_len=args.output_len,
        trace_start_s=args.trace_start, max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens,
        min_output_tokens=args.min_output_tokens, dataset=args.dataset,
        tokenizer=args.tokenizer or args.target_model, temperature=args.temperature, ignore_eos=args.ignore_eos,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms, slo_classes=args.slo_class, goodput=args.goodput,
        rounds=args.rounds, alternate_rates=args.alternate_rates, backend=args.backend, model=args.model,
        request_timeout_s=args.request_timeout, max_retries=args.max_retries, baseline=args.baseline)


def run_bench_command(args: argparse.Namespace) -> int:
    """Benchmark `--target`, or a stack started for the purpose; print the tables, write the results. Failed
    requests are results (counted per row), not a failure of the command."""
    from adaspec.bench.report import markdown_tables, write_results
    from adaspec.bench.runner import run_bench

    config = config_from_args(args)
    if args.base_url and args.backend != "openai" or args.target and args.backend == "openai":
        raise ValueError("--target is the adaspec backend's coordinator, --base-url the openai backend's server")
    if args.target or args.base_url:
        results = run_bench(config, args.target or args.base_url)
    else:
        from adaspec.stack import Stack, StackConfig

        stack_config = StackConfig(verify_replicas=args.verify_replicas, draft_replicas=args.draft_replicas,
                                   redis=args.redis, target=args.target_model, draft=args.draft_model,
                                   threads=args.threads, profile=args.profile, log_dir=args.log_dir,
                                   verify_args=args.replica_args, draft_args=args.replica_args,
                                   http=args.backend == "openai")
        print("starting the stack (verify, draft, coordinator) ...", file=sys.stderr, flush=True)
        with Stack(stack_config) as stack:
            print(f"coordinator at {stack.address}; service logs in {stack.log_dir}", file=sys.stderr, flush=True)
            results = run_bench(config, stack.http_url + "/v1" if args.backend == "openai" else stack.address)
        results["stack"] = {"verify_replicas": args.verify_replicas, "draft_replicas": args.draft_replicas,
                            "redis": args.redis, "target_model": args.target_model, "draft_model": args.draft_model,
                            "threads": args.threads, "profile": args.profile, "replica_args": args.replica_args}
    paths = write_results(results, args.output_json)
    print(f"\nworkload: {results['workload']}\n")
    print(markdown_tables(results))
    for row in results["rows"]:
        for error, count in row["errors"].items():
            print(f"  {row['policy']} at {row['rate']:g} req/s: {count} x {error}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
