"""Where one speculation step's wall time goes through the services, from the spans every process exports.

    python benchmarks/step_breakdown.py                       # fixed:4, concurrency 1, 3 requests of 300 tokens
    python benchmarks/step_breakdown.py --policy none --requests 5

Starts the stack with tracing on, exporting to an OTLP receiver in this process (every process reads the same
clock), runs requests one at a time, and splits each drafting step (a `speculation step` span with one `draft
step` and one `verify step` child, each linked from its replica's `engine step`) into the coordinator's send, each
replica's wait before its engine step, the engine steps and the replies; and, for every policy, the time the verify
replica's engine stands idle between two steps of the request (at k = 0 the next step is already waiting there). For scale, the same machine's floor: the round trip of one small message
over a bare grpc.aio stream between two processes. Prints the medians (ms) and writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path
from unittest import mock

import grpc
from otlp_receiver import OtlpReceiver  # the script directory is on sys.path

from adaspec import AsyncClient
from adaspec.stack import Stack, StackConfig
from adaspec.workload import format_table

PROMPTS = ["def fib(n):", "import os\nimport sys\n", "class Queue:\n"]
ECHO = ("bench.Echo", "Link")


def serve_echo(port: int) -> None:
    """A bidi stream that sends every message back (in a process of its own)."""
    async def echo(requests, context):
        async for message in requests:
            yield message

    async def serve():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            ECHO[0], {ECHO[1]: grpc.stream_stream_rpc_method_handler(echo)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def grpc_round_trip_ms(messages: int = 2000) -> float:
    """Median round trip of a 120-byte message over a grpc.aio bidi stream to another process on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=serve_echo, args=(port,), daemon=True)
    server.start()

    async def ping() -> list[float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            call = channel.stream_stream(f"/{ECHO[0]}/{ECHO[1]}")()
            times = []
            for _ in range(messages):
                start = time.perf_counter()
                await call.write(b"x" * 120)
                await call.read()
                times.append((time.perf_counter() - start) * 1e3)
            call.cancel()
            return times[messages // 10 :]  # after warm-up

    try:
        return statistics.median(asyncio.run(ping()))
    finally:
        server.kill()


async def run_requests(address: str, policy: str, requests: int, tokens: int) -> list:
    async with AsyncClient(address) as client:
        await client.generate("def f():", max_tokens=32, temperature=0, ignore_eos=True, policy=policy)  # warm-up
        return [await client.generate(PROMPTS[i % len(PROMPTS)], max_tokens=tokens, temperature=0, ignore_eos=True,
                                      policy=policy) for i in range(requests)]


def segments(receiver: OtlpReceiver, trace_ids: list[str]) -> dict[str, list[float]]:
    """Per step, ms: the parts of the module docstring, keyed by name. Only drafting steps are split: a step
    without drafts goes out ahead of the previous reply, so its spans overlap the previous step's."""
    ms = lambda ns: ns / 1e6
    served_by: dict[str, dict] = {}  # session step span -> the engine step that served it (its last linked one)
    with receiver.lock:
        for engine in sorted((s for s in receiver.spans if s["name"].endswith("engine step")), key=lambda s: s["start"]):
            served_by.update(dict.fromkeys(engine["links"], engine))
    parts: dict[str, list[float]] = {}
    add = lambda name, value: parts.setdefault(name, []).append(value)
    for trace_id in trace_ids:
        spans = receiver.of_trace(trace_id)
        verify_engine = sorted({served_by[s["span_id"]]["span_id"]: served_by[s["span_id"]] for s in spans
                                if s["name"] == "verify step" and s["span_id"] in served_by}.values(),
                               key=lambda s: s["start"])
        for engine in verify_engine:
            add("verify engine step, every step", ms(engine["end"] - engine["start"]))
        for before, after in itertools.pairwise(verify_engine):
            add("verify engine: idle between this request's steps", ms(after["start"] - before["end"]))
        for step in (s for s in spans if s["name"] == "speculation step"):
            children = [s for s in spans if s["parent"] == step["span_id"]]
            drafts = [s for s in children if s["name"] == "draft step" and s["span_id"] in served_by]
            verifies = [s for s in children if s["name"] == "verify step" and s["span_id"] in served_by]
            if len(drafts) != 1 or len(verifies) != 1:
                continue
            draft, verify = drafts[0], verifies[0]
            draft_engine, verify_engine = served_by[draft["span_id"]], served_by[verify["span_id"]]
            add("drafting step", ms(step["end"] - step["start"]))
            add("coordinator -> draft replica", ms(draft["start"] - step["start"]))
            add("draft: message to engine step", ms(draft_engine["start"] - draft["start"]))
            add("draft engine step", ms(draft_engine["end"] - draft_engine["start"]))
            add("draft: engine step to reply", ms(draft["end"] - draft_engine["end"]))
            add("draft reply -> coordinator -> verify replica", ms(verify["start"] - draft["end"]))
            add("verify: message to engine step", ms(verify_engine["start"] - verify["start"]))
            add("verify engine step", ms(verify_engine["end"] - verify_engine["start"]))
            add("verify: engine step to reply", ms(verify["end"] - verify_engine["end"]))
            add("verify reply -> coordinator", ms(step["end"] - verify["end"]))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="fixed:4")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step_breakdown.json")
    args = parser.parse_args()

    receiver = OtlpReceiver()
    receiver.start()
    try:
        with mock.patch.dict(os.environ, receiver.exporter_env(span_delay_ms=200)):  # the services' environment
            stack = Stack(StackConfig(threads=args.threads)).start()
        try:
            completions = asyncio.run(run_requests(stack.address, args.policy, args.requests, args.tokens))
            time.sleep(1.0)  # the last spans leave with the next export (every 0.2 s)
        finally:
            stack.stop()  # the services flush their spans as they exit
    finally:
        receiver.stop()
    parts = segments(receiver, [c.stats.trace_id for c in completions])
    rows = [{"part": name, "steps": len(values), "median_ms": statistics.median(values),
             "mean_ms": statistics.mean(values)} for name, values in parts.items()]
    floor = grpc_round_trip_ms()
    rows.append({"part": "(floor: bare grpc.aio round trip between two processes)", "median_ms": floor})
    tpot = [c.stats.tpot_ms for c in completions]
    print(f"{args.policy}, concurrency 1, {args.requests} requests of {args.tokens} tokens: TPOT ms {tpot}")
    print(format_table(rows, [("part", "part"), ("steps", "steps"), ("median_ms", "median ms", ".2f"),
                              ("mean_ms", "mean ms", ".2f")]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"policy": args.policy, "requests": args.requests, "tokens": args.tokens,
                                    "threads": args.threads, "tpot_ms": tpot, "parts": rows,
                                    "grpc_round_trip_ms": floor}, indent=1))


if __name__ == "__main__":
    main()
