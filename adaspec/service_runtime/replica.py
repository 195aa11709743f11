"""Running a model replica (verify or draft) as a process: arguments, start, heartbeat, drain, stop."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from adaspec.loadstore import ReplicaLoad, open_load_store, redact
from adaspec.service_runtime.engine_core import EngineCore, ProcessCore, ThreadCore
from adaspec.service_runtime.heartbeat import Heartbeat
from adaspec.service_runtime.logs import configure_logging
from adaspec.service_runtime.metrics import ReplicaMetrics, add_metrics_args, serve_metrics
from adaspec.service_runtime.port_file import add_port_file_arg
from adaspec.service_runtime.server import ServiceHost
from adaspec.service_runtime.tracing import configure_tracing
from adaspec.service_runtime.transport_security import add_security_args, tls_from_args

log = logging.getLogger(__name__)


def add_replica_args(parser: argparse.ArgumentParser, default_port: int, kind: str) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, help="0: any free port")
    add_port_file_arg(parser)
    parser.add_argument("--replica-id", default=f"{kind}-{os.getpid()}")
    parser.add_argument("--redis", help="publish heartbeats to this Redis URL (without it the coordinator polls)")
    parser.add_argument("--heartbeat-s", type=float, default=0.5, help="heartbeat interval")
    parser.add_argument("--ttl-s", type=float, default=3.0, help="heartbeat TTL: gone this long after the last one")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--kv-cache-mb", type=int, help="KV cache budget in MiB")
    parser.add_argument("--max-spec-len", type=int, default=8)
    parser.add_argument("--profile", help="latency profile written by `adaspec profile` (default: a quick one is "
                                          "measured at start); refined from every step and published with the load")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay decode and verify forwards as CUDA graphs captured at start (CUDA only)")
    parser.add_argument("--engine-core", choices=["auto", "process", "thread"], default="auto",
                        help="where the engine steps: a process of its own, or a thread of the service (whose "
                             "gRPC then shares the GIL with the step); auto: a process on a GPU, a thread on CPU")
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: at most this long to drain and stop")
    add_security_args(parser)
    add_metrics_args(parser)
    parser.add_argument("--log-level", default="info")


def same_torch_threads() -> Callable[[], None]:
    """An initializer for a new thread (the engine's step thread): this thread's torch CPU thread count.
    OpenMP's count is per thread and a new thread starts at every core: after `--threads 1`, 512x512
    matmuls in a fresh thread still ran at 1.96 CPU-seconds per second on 2 cores, so model processes
    sharing a machine would each step on all of its cores."""
    import torch

    return functools.partial(torch.set_num_threads, torch.get_num_threads())


def start_engine_core(args, kind: str, factory: Callable[..., Any], engine_args: dict) -> EngineCore:
    """The replica's engine: `factory(**engine_args)`, in a process of its own or in this one (--engine-core).

    auto: a process where the step runs on a GPU; there the step's Python (kernel launches) and the
    service's (gRPC, replies) would otherwise take turns on one GIL while the device waits. On CPU the two
    processes compete for the cores the step computes on: on 2 cores the split was 5-10 % slower
    (alternating A/B; README), so the engine steps in a thread of the service."""
    mode = args.engine_core
    if mode == "auto":
        import torch

        from adaspec.engine.model_loader import default_device

        device = torch.device(args.device) if args.device else default_device()
        mode = "process" if device.type == "cuda" else "thread"
    if mode == "thread":
        return ThreadCore(factory(**engine_args), kind, init_thread=same_torch_threads())
    return ProcessCore(factory, engine_args, kind, threads=args.threads, log_level=args.log_level).start()


def run_replica(args, kind: str, service_name: str, build, add_to_server) -> None:
    configure_logging(f"{kind}:{args.replica_id}", args.log_level)
    configure_tracing(kind)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    asyncio.run(_serve(args, kind, service_name, build, add_to_server))


async def _serve(args, kind: str, service_name: str, build, add_to_server) -> None:
    host = ServiceHost(kind, [service_name], args.host, args.port, grace_s=args.grace_s, port_file=args.port_file,
                       tls=tls_from_args(args), reflection_on=not args.no_reflection)
    service = build(args, host.address)
    add_to_server(service, host.server)
    store = open_load_store(args.redis) if args.redis else None
    heartbeat = Heartbeat(store, service.snapshot, args.heartbeat_s, args.ttl_s)
    load = service.snapshot()
    metrics = ReplicaMetrics(kind, load.replica_id, load.pool)
    service.loop.on_step = metrics.step
    engine_gone = False

    def on_engine_gone() -> None:  # a replica without its engine serves nothing: stop, and exit with an error
        nonlocal engine_gone
        engine_gone = True
        host.request_stop()

    service.loop.core.on_gone = on_engine_gone
    service.loop.start()
    await host.start()
    heartbeat.start()
    metrics_server = serve_metrics(metrics.registry, args.host, args.metrics_port, args.metrics_port_file)
    gauges = asyncio.create_task(_update_gauges(metrics, service.snapshot, args.heartbeat_s), name="metrics")
    log.info("ready", extra={"replica_id": args.replica_id, "address": host.address,
                             "load_store": redact(args.redis) if args.redis else "polled by the coordinator"})

    async def drain() -> None:  # bounded by --grace-s (ServiceHost.stop)
        await heartbeat.stop()  # coordinators stop routing here at once, not after the TTL
        while service.snapshot().sessions:
            await asyncio.sleep(0.05)

    try:
        await host.run_until_signal(drain)
    finally:
        gauges.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        await service.loop.stop()
        if store is not None:
            await store.close()
    if engine_gone:
        raise SystemExit(f"{kind} {args.replica_id}: its engine process exited")


async def _update_gauges(metrics: ReplicaMetrics, snapshot: Callable[[], ReplicaLoad], interval_s: float) -> None:
    """The load gauges, refreshed on the event loop as often as the heartbeat (a scrape reads them as they are)."""
    while True:
        metrics.update(snapshot())
        await asyncio.sleep(interval_s)
