"""The `adaspec` command line: run the stack (`up`), one service (`serve`), a client (`generate`), the demo, the
benchmark (`bench`), the latency profile (`profile`)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time

from adaspec.client._base import DEFAULT_ADDRESS
from adaspec.service_runtime.transport_security import add_tls_args, read_api_key
from adaspec.speculation.policies import DEFAULT_POLICY, POLICY_NAMES

POLICY_HELP = " | ".join(POLICY_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaspec", description="Load- and SLO-adaptive speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start verify, draft, coordinator and HTTP API processes on loopback; Ctrl-C "
                                   "stops them")
    add_stack_args(up)
    up.add_argument("--port", type=int, default=50051, help="coordinator port")
    up.add_argument("--http-port", type=int, default=8000, help="port of the OpenAI-compatible HTTP API")
    up.add_argument("--no-http", action="store_true", help="no HTTP API process")
    up.add_argument("--api-key-file", help="require this file's key as `Authorization: Bearer KEY` on the HTTP API "
                                           "and the gRPC API (or set $ADASPEC_API_KEY)")
    up.add_argument("--tls", action="store_true", help="TLS on every endpoint, mutual TLS between the coordinator and "
                                                       "the replicas, with certificates made for the run (log dir)")

    serve = sub.add_parser("serve", help="run one service (what a container runs)")
    services = serve.add_subparsers(dest="service", required=True)
    from adaspec.services.coordinator.main import add_args as coordinator_args

    coordinator_args(services.add_parser("coordinator", help="the public API"))
    from adaspec.services.draft.main import add_args as draft_args
    from adaspec.services.verify.main import add_args as verify_args

    verify_args(services.add_parser("verify", help="a verify replica (target model)"))
    draft_args(services.add_parser("draft", help="a draft replica (draft model)"))
    from adaspec.http.main import add_args as http_args

    http_args(services.add_parser("http", help="the OpenAI-compatible HTTP API in front of a coordinator"))

    gen = sub.add_parser("generate", help="generate text for one prompt through a running coordinator")
    gen.add_argument("prompt")
    gen.add_argument("--address", default=DEFAULT_ADDRESS)
    gen.add_argument("--offline", action="store_true", help="no service: run the in-process engine")
    gen.add_argument("--target", help="with --offline: target checkpoint directory")
    gen.add_argument("--draft", help="with --offline: draft checkpoint directory")
    gen.add_argument("--policy", help=f"{POLICY_HELP} (default: the coordinator's; offline: {DEFAULT_POLICY})")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--ttft-ms", type=float)
    gen.add_argument("--tpot-ms", type=float)
    gen.add_argument("--timeout", type=float, help="deadline in seconds")
    gen.add_argument("--api-key-file", help="the coordinator's API key (default: $ADASPEC_API_KEY, if set)")
    add_tls_args(gen, serves=False)

    demo = sub.add_parser("demo", help="start the stack on the bundled models and replay the Azure code trace")
    add_stack_args(demo)
    from adaspec.demo import add_demo_args

    add_demo_args(demo)

    bench = sub.add_parser("bench", help="serving benchmark: request rates x policies, vLLM's metrics, SLO attainment")
    from adaspec.bench.cli import add_bench_args

    add_bench_args(bench)

    profile = sub.add_parser("profile", help="measure the latency profile of the models on this machine")
    from adaspec.profiling import add_profile_args

    add_profile_args(profile)

    check = sub.add_parser("healthcheck", help="exit 0 if HOST:PORT answers SERVING to gRPC health checking, 1 if not "
                                               "(a container's health check)")
    check.add_argument("address", help="HOST:PORT of an AdaSpec gRPC service")
    check.add_argument("--service", default="", help="the gRPC service to ask about (default: the server as a whole)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    add_tls_args(check, serves=False)

    certs = sub.add_parser("certs", help="make a private CA and a service certificate for a local run with TLS "
                                         "and mutual TLS")
    certs.add_argument("directory", help="where to write ca.pem, service.pem and service.key")
    certs.add_argument("--name", action="append", default=[],
                       help="a host name or IP address the services are reached at (repeatable; localhost and "
                            "loopback are always in)")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"adaspec: error: {error}", file=sys.stderr)
        return 2


def add_stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify-replicas", type=int, default=1)
    parser.add_argument("--draft-replicas", type=int, default=1)
    parser.add_argument("--redis",
                        help="'spawn' (start a local redis-server) or a Redis URL; default: in-process store")
    parser.add_argument("--target", help="target checkpoint directory (default: the bundled tiny-target)")
    parser.add_argument("--draft", help="draft checkpoint directory (default: the bundled tiny-draft)")
    parser.add_argument("--policy", default=DEFAULT_POLICY, help=f"default policy: {POLICY_HELP}")
    parser.add_argument("--threads", type=int, help="torch threads per model process (default: cores / processes)")
    parser.add_argument("--profile", help="latency profile for the replicas, from `adaspec profile` (default: each "
                                          "measures a quick one at start)")
    parser.add_argument("--log-dir", help="service logs (default: a temporary directory)")


def stack_config(args, port: int = 0):
    from adaspec.stack import StackConfig

    return StackConfig(verify_replicas=args.verify_replicas, draft_replicas=args.draft_replicas, redis=args.redis,
                       target=args.target, draft=args.draft, policy=args.policy, coordinator_port=port,
                       threads=args.threads, profile=args.profile, log_dir=args.log_dir)


def cmd_up(args) -> int:
    from adaspec.stack import Stack, StackDown

    config = stack_config(args, args.port)
    config.http, config.http_port = not args.no_http, args.http_port
    config.api_key, config.tls = read_api_key(args.api_key_file), args.tls
    stack = Stack(config)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # like Ctrl-C: leave the `with` and stop in order
    print("starting ...", file=sys.stderr)
    with stack:
        for name, process in stack.processes.items():
            print(f"{name:<12} {process.address:<22} log: {process.log_path}")
        if stack.redis_url:
            print(f"{'load store':<12} {stack.redis_url}")
        secure = f" --tls-ca {stack.tls.ca}" if stack.tls else ""
        secure += f" --api-key-file {args.api_key_file}" if args.api_key_file else ""
        print(f"\nready: adaspec generate 'def main():' --address {stack.address}{secure}   (Ctrl-C stops the stack)")
        if config.http:
            print(f"       OpenAI-compatible API at {stack.http_url}/v1: curl {stack.http_url}/v1/completions "
                  f"""-H 'Content-Type: application/json' -d '{{"prompt": "def main():", "max_tokens": 32}}'""")
        try:
            while True:  # a replica or the HTTP API that dies is restarted (Stack.supervise), the coordinator is fatal
                stack.supervise()
                time.sleep(0.5)
        except StackDown as error:
            print(f"adaspec: {error}\nadaspec: stopping the stack", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    module = "adaspec.http.main" if args.service == "http" else f"adaspec.services.{args.service}.main"
    importlib.import_module(module).main(args)
    return 0


def cmd_generate(args) -> int:
    if args.offline:
        return _generate_offline(args)
    from adaspec.client import Client
    from adaspec.errors import AdaSpecError

    try:
        with Client(args.address, api_key=read_api_key(args.api_key_file), tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                    tls_key=args.tls_key) as client:
            print(args.prompt, end="", flush=True)
            for chunk in client.stream(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop or None,
                                       policy=args.policy,
                                       ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms, timeout=args.timeout):
                print(chunk.text, end="", flush=True)
                if chunk.stats is not None:
                    s = chunk.stats
                    print(f"\n\n[{s.output_tokens} tokens, finish: {chunk.finish_reason}, TTFT {s.ttft_ms:.0f} ms, "
                          f"TPOT {s.tpot_ms or 0:.1f} ms, acceptance {s.acceptance_rate:.2f}, mean k {s.mean_k:.2f}, "
                          f"verify {s.verify_replica}]", file=sys.stderr)
    except AdaSpecError as error:
        print(f"\nadaspec: {error}", file=sys.stderr)
        return 1
    return 0


def _generate_offline(args) -> int:
    from adaspec import Engine, SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=args.stop)
    out = Engine(args.target, args.draft).generate([args.prompt], params, policy=args.policy or DEFAULT_POLICY,
                                                   ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms)[0]
    print(args.prompt + out.text)
    stats = out.stats
    print(f"\n[{len(out.token_ids)} tokens, finish: {out.finish_reason}, steps: {stats['steps']}, "
          f"acceptance: {stats['acceptance_rate']:.2f}, mean k: {stats['mean_k']:.2f}]", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from adaspec.demo import run_demo

    return run_demo(args, stack_config(args))


def cmd_bench(args) -> int:
    from adaspec.bench.cli import run_bench_command

    return run_bench_command(args)


def cmd_profile(args) -> int:
    from adaspec.profiling import run_profile

    return run_profile(args)


def cmd_healthcheck(args) -> int:
    """The standard gRPC health check, the one `adaspec up` and Kubernetes' `grpc` probes use, for container
    health checks: the image needs no extra probe binary."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from adaspec.service_runtime.transport_security import channel, tls_from_args

    with channel(args.address, tls_from_args(args), aio=False) as health_channel:
        try:
            reply = health_pb2_grpc.HealthStub(health_channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:  # unreachable, timed out, or an unknown service (NOT_FOUND)
            print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_certs(args) -> int:
    from adaspec.service_runtime.dev_certificates import make_dev_certificates

    made = make_dev_certificates(args.directory, args.name)
    print(f"wrote {made.ca}, {made.cert} and {made.key}: run the services with --tls-cert {made.cert} --tls-key "
          f"{made.key}, dial them with --tls-ca {made.ca} (and require client certificates with --tls-client-ca "
          f"{made.ca})")
    return 0


COMMANDS = {"up": cmd_up, "serve": cmd_serve, "generate": cmd_generate, "demo": cmd_demo, "bench": cmd_bench,
            "profile": cmd_profile, "healthcheck": cmd_healthcheck, "certs": cmd_certs}

if __name__ == "__main__":
    sys.exit(main())
