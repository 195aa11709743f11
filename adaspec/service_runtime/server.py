"""One gRPC server as every AdaSpec service runs it: health, reflection, limits, graceful shutdown.

Settings chosen on purpose:
- Message size: 16 MiB each way. Per-step messages are a few KiB (token ids and a K <= 32 sparse q);
  the limit only bounds a long text prompt, far below what would hurt the process.
- Keepalive: a ping every 20 s on idle connections, dropped after 10 s without an answer, so a dead peer
  (a killed replica, a lost coordinator) is noticed and its sessions are closed instead of hanging.
- Shutdown (SIGTERM or SIGINT): health goes NOT_SERVING first (load balancers and coordinators stop
  sending new work), the service drains (`on_drain`), then the RPCs still running are cancelled; `grace_s`
  bounds the whole shutdown.
- TLS or mutual TLS, and an API key on the service's own methods, when configured
  (`adaspec.service_runtime.transport_security`); reflection can be turned off.
- A request that does not decode gets INVALID_ARGUMENT (`adaspec.service_runtime.undecodable_requests`).
- With tracing on, the gRPC instrumentation traces each call but the links' and health checks'
  (`adaspec.service_runtime.tracing`).
- SIGUSR1 writes every thread's stack to stderr (the log), to see where a stuck process is.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adaspec.service_runtime.port_file import write_address
from adaspec.service_runtime.tracing import rpc_server_interceptor
from adaspec.service_runtime.transport_security import RequireApiKey, TlsFiles, channel
from adaspec.service_runtime.undecodable_requests import RejectUndecodableRequests

MAX_MESSAGE_BYTES = 16 * 2**20
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    *KEEPALIVE_OPTIONS,
]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    *KEEPALIVE_OPTIONS,
]

log = logging.getLogger(__name__)


class ServiceHost:
    """Hosts servicers on one port with standard health checking and server reflection."""

    def __init__(self, name: str, service_names: list[str], host: str = "127.0.0.1", port: int = 0,
                 grace_s: float = 10.0, port_file: str | None = None, tls: TlsFiles | None = None,
                 api_key: str | None = None, reflection_on: bool = True):
        """`tls`: serve TLS (mutual TLS with its client CA); `api_key`: required by `service_names`' methods
        (health and reflection stay open); `reflection_on`: serve gRPC server reflection."""
        self.name, self.service_names = name, service_names
        self.grace_s = grace_s
        interceptors = [rpc_server_interceptor(), RequireApiKey(api_key, service_names) if api_key else None,
                        RejectUndecodableRequests()]  # the first is the outermost: refused unauthenticated, undecoded
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[i for i in interceptors if i is not None])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection_on:
            reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                                self.server)
        credentials = tls.server_credentials() if tls is not None else None
        address = f"{host}:{port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials is not None
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"{name}: cannot listen on {host}:{port}")
        self.address = f"{host}:{self.port}"
        write_address(port_file, self.address)  # bound now: a launcher can hand the address on while we start
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.server.start()
        for service in ["", *self.service_names]:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": self.address})

    async def stop(self, on_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """NOT_SERVING, drain, then stop: `grace_s` bounds the drain and the RPCs still running together."""
        deadline = time.monotonic() + self.grace_s
        try:
            await self.health.enter_graceful_shutdown()
            log.info("draining", extra={"address": self.address})
            if on_drain is not None:
                await asyncio.wait_for(on_drain(), self.grace_s)
        except TimeoutError:
            log.warning("drain incomplete after the grace period", extra={"grace_s": self.grace_s})
        finally:  # whatever the drain did, the server stops: a live gRPC server would hold the process
            await self.server.stop(max(0.0, deadline - time.monotonic()))
            log.info("stopped", extra={"address": self.address})

    def request_stop(self) -> None:
        """Stop as on SIGTERM (from inside the service: its engine is gone)."""
        self._stopping.set()

    async def run_until_signal(self, on_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.stop(on_drain)


async def wait_until_serving(address: str, timeout_s: float = 60.0, service: str = "",
                             tls: TlsFiles | None = None) -> None:
    """Poll the standard health service until `address` answers SERVING (what `adaspec up` waits for)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with channel(address, tls) as health_channel:
        stub = health_pb2_grpc.HealthStub(health_channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{address} did not report SERVING within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
