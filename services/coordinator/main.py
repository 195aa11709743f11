"""`adaspec serve coordinator`: the public API process (stateless; run as many as needed)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from adaspec.services.coordinator.load_poller import LoadPoller
from adaspec.services.coordinator.load_view import LoadView
from adaspec.services.coordinator.service import SERVICE_NAME, Channels, CoordinatorService

from adaspec.loadstore import InProcessLoadStore, open_load_store, redact
from adaspec.service_runtime.logs import configure_logging
from adaspec.service_runtime.metrics import add_metrics_args, serve_metrics
from adaspec.service_runtime.port_file import add_port_file_arg
from adaspec.service_runtime.server import ServiceHost
from adaspec.service_runtime.tracing import configure_tracing
from adaspec.service_runtime.transport_security import API_KEY_ENV, add_security_args, read_api_key, tls_from_args
from adaspec.speculation.policies import DEFAULT_POLICY, POLICY_NAMES
from adaspec.v1 import coordinator_pb2_grpc

# Interactive serving defaults (those of the demo; the AdaSpec paper fixes 40 ms): requests may name their own.
DEFAULT_TTFT_MS, DEFAULT_TPOT_MS = 1000.0, 50.0

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0: any free port")
    add_port_file_arg(parser)
    parser.add_argument("--redis", help="Redis URL of the shared load store (default: in-process, polling replicas)")
    parser.add_argument("--verify", default="", help="verify replica addresses, comma-separated (polled without Redis)")
    parser.add_argument("--draft", default="", help="draft replica addresses, comma-separated (polled without Redis)")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"default policy, for requests that name none: {' | '.join(POLICY_NAMES)}")
    parser.add_argument("--max-spec-len", type=int, default=8)
    parser.add_argument("--default-ttft-ms", type=float, default=DEFAULT_TTFT_MS,
                        help="TTFT SLO of requests that name none (0: none)")
    parser.add_argument("--default-tpot-ms", type=float, default=DEFAULT_TPOT_MS,
                        help="TPOT SLO of requests that name none (0: none)")
    parser.add_argument("--view-s", type=float, default=0.25, help="how often the replicas' load is read")
    parser.add_argument("--lease-s", type=float, default=30.0,
                        help="capacity leases expire this long after their last renewal (a dead coordinator's too)")
    parser.add_argument("--draft-timeout-s", type=float, default=5.0,
                        help="a draft replica that gives no drafts this long is dropped: the request goes on at k = 0")
    parser.add_argument("--max-loop-lag-s", type=float, default=2.0,
                        help="refuse new requests (RESOURCE_EXHAUSTED) while the event loop runs this far behind: "
                             "gRPC cancels calls it holds unaccepted for 30 s (0: never refuse)")
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--ttl-s", type=float, default=3.0)
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: at most this long to drain and stop")
    parser.add_argument("--api-key-file", help=f"require `authorization: Bearer KEY` of clients, KEY read from this "
                                               f"file (default: ${API_KEY_ENV} if set, else no authentication)")
    add_security_args(parser)
    add_metrics_args(parser)
    parser.add_argument("--log-level", default="info")


def main(args) -> None:
    configure_logging("coordinator", args.log_level)
    configure_tracing("coordinator")
    asyncio.run(_serve(args))


async def _serve(args) -> None:
    split = lambda value: [a for a in value.split(",") if a]
    store = open_load_store(args.redis)
    if args.redis:
        await store.ping()
    tls = tls_from_args(args)
    channels = Channels(tls)
    poller = None
    if isinstance(store, InProcessLoadStore):
        poller = LoadPoller(store, channels, split(args.verify), split(args.draft), args.poll_s, args.ttl_s)
        await poller.start()
    view = LoadView(store, args.view_s)
    await view.start()
    service = CoordinatorService(store, redact(args.redis) if args.redis else "memory", channels, view, args.policy,
                                 args.max_spec_len, (args.default_ttft_ms or None, args.default_tpot_ms or None),
                                 args.draft_timeout_s, args.lease_s, max_loop_lag_s=args.max_loop_lag_s or None)
    service.leases.start()
    service.loop_lag.start()
    host = ServiceHost("coordinator", [SERVICE_NAME], args.host, args.port, grace_s=args.grace_s,
                       port_file=args.port_file, tls=tls, api_key=read_api_key(args.api_key_file),
                       reflection_on=not args.no_reflection)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(service, host.server)
    await host.start()
    metrics_server = serve_metrics(service.metrics.registry, args.host, args.metrics_port, args.metrics_port_file)
    log.info("ready", extra={"address": host.address, "load_store": service.store_name})
    try:
        await host.run_until_signal(service.drain)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        await service.leases.stop()
        await service.loop_lag.stop()
        await view.stop()
        if poller is not None:
            await poller.stop()
        await channels.close()
        await store.close()
