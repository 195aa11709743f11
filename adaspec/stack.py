"""The whole stack on one machine, as separate processes: verify replica(s), draft replica(s), a coordinator,
and optionally the OpenAI-compatible HTTP API in front of it.

What `adaspec up` and `adaspec demo` run, and what the service tests and benchmarks start. Every
process is a real `adaspec serve ...` on a loopback port, port 0 unless configured: the service binds a port the
system picks and writes the address to its `--port-file` (`adaspec.service_runtime.port_file`), which this reads, the
replicas' before the coordinator that is given them starts. `start()` returns once each one reports
SERVING through standard gRPC health checking (the HTTP process: once its `/health` answers 200, which it
does once the coordinator serves); `stop()` sends SIGTERM (graceful drain) and escalates to SIGKILL only
if a process does not exit. `supervise()`, which `adaspec up` calls in a loop, restarts a replica or the HTTP
process that dies, within a budget, and raises `StackDown` when the coordinator dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaspec.http.readiness import wait_until_healthy
from adaspec.loadstore import RedisServer
from adaspec.service_runtime.dev_certificates import make_dev_certificates
from adaspec.service_runtime.lifetime import die_with_parent
from adaspec.service_runtime.server import wait_until_serving
from adaspec.service_runtime.transport_security import TlsFiles, channel
from adaspec.v1 import common_pb2, draft_pb2_grpc, verify_pb2_grpc


@dataclass
class StackConfig:
    verify_replicas: int = 1
    draft_replicas: int = 1
    redis: str | None = None  # None: in-process store in the coordinator; "spawn": start a redis-server; or a URL
    target: str | None = None
    draft: str | None = None
    policy: str = "adaspec"
    host: str = "127.0.0.1"
    coordinator_port: int = 0  # 0: any free port
    verify_args: list[str] = field(default_factory=list)  # extra `adaspec serve verify` arguments
    draft_args: list[str] = field(default_factory=list)
    coordinator_args: list[str] = field(default_factory=list)
    http: bool = False  # the OpenAI-compatible HTTP API process (`adaspec serve http`), named "http"
    http_port: int = 0  # 0: any free port
    http_args: list[str] = field(default_factory=list)
    threads: int | None = None  # torch threads per model process (default: cores / model processes)
    profile: str | None = None  # latency profile for the replicas (`adaspec profile`; default: each measures one)
    log_dir: str | None = None
    metrics: bool = False  # every service serves Prometheus metrics on a free port (`Stack.metrics_url`)
    tls: bool = False  # TLS everywhere, mutual TLS between coordinator and replicas (certificates made in log_dir)
    api_key: str | None = None  # required by the coordinator (gRPC) and the HTTP API; the HTTP API presents it
    ready_timeout_s: float = 120.0
    # `supervise`: a process that dies is restarted at most `restart_budget` times within `restart_window_s`,
    # after `restart_backoff_s` (doubled for each restart already in the window): 1 s, 2 s, 4 s
    restart_budget: int = 3
    restart_window_s: float = 300.0
    restart_backoff_s: float = 1.0


@dataclass
class Process:
    name: str
    address: str  # "" until the service has written it to `port_file`
    popen: subprocess.Popen
    log_path: Path
    port_file: Path | None = None
    args: list[str] = field(default_factory=list)  # its `adaspec serve` arguments, to restart it with
    restarts: list[float] = field(default_factory=list)  # time.monotonic() of each restart by `supervise`
    restart_at: float | None = None  # dead, to be restarted then
    given_up: bool = False  # dead with its restart budget spent: it stays down


class StackDown(RuntimeError):
    """The stack cannot serve any more: its coordinator exited."""


class Stack:
    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self.processes: dict[str, Process] = {}
        self.killed: set[str] = set()  # by `kill` (fault tests)
        self.overstayed: set[str] = set()  # SIGKILLed by `stop`
        self.redis: RedisServer | None = None
        self.redis_url: str | None = None
        self.tls: TlsFiles | None = None  # with StackConfig.tls: the certificates the services run with
        self.log_dir = Path(self.config.log_dir or tempfile.mkdtemp(prefix="adaspec-stack-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return self.processes["coordinator"].address

    @property
    def http_url(self) -> str:
        """The HTTP API's root (`http://host:port`); OpenAI clients take `http_url + "/v1"` as base URL."""
        return f"http://{self.processes['http'].address}"

    def start(self) -> Stack:
        c = self.config
        try:
            self.redis_url = c.redis
            if c.redis == "spawn":
                self.redis = RedisServer().start()
                self.redis_url = self.redis.url
            store = ["--redis", self.redis_url] if self.redis_url else []
            replica_tls, coordinator_tls, http_tls = self._security_args()
            models = c.verify_replicas + c.draft_replicas
            threads = c.threads or max(1, (os.cpu_count() or 1) // max(models, 1))
            common = ["--host", c.host, "--threads", str(threads), *store, *replica_tls,
                      *(["--profile", c.profile] if c.profile else [])]
            for i in range(c.verify_replicas):
                self._spawn(f"verify-{i}", ["verify", *common, *(["--target", c.target] if c.target else []),
                                            *c.verify_args])
            for i in range(c.draft_replicas):
                self._spawn(f"draft-{i}", ["draft", *common, *(["--draft", c.draft] if c.draft else []),
                                           *c.draft_args])
            self._learn_addresses()
            verify = ",".join(p.address for n, p in self.processes.items() if n.startswith("verify"))
            draft = ",".join(p.address for n, p in self.processes.items() if n.startswith("draft"))
            self._spawn("coordinator", ["coordinator", "--host", c.host, *store, "--verify", verify, "--draft", draft,
                                        "--policy", c.policy, *coordinator_tls, *c.coordinator_args],
                        port=c.coordinator_port)
            self._learn_addresses()
            if c.http:
                self._spawn("http", ["http", "--host", c.host, "--coordinator", self.address, *http_tls,
                                     *(["--tokenizer", c.target] if c.target else []), *c.http_args], port=c.http_port)
                self._learn_addresses()
            asyncio.run(self._wait_ready())
        except BaseException:
            self.stop()
            raise
        return self

    def _security_args(self) -> tuple[list[str], list[str], list[str]]:
        """The replicas', the coordinator's and the HTTP API's TLS and API key arguments."""
        c, replicas, coordinator, http = self.config, [], [], []
        if c.tls:
            made = make_dev_certificates(self.log_dir / "certs", [c.host])
            self.tls = TlsFiles(str(made.cert), str(made.key), str(made.ca))
            own = ["--tls-cert", str(made.cert), "--tls-key", str(made.key)]
            replicas = [*own, "--tls-client-ca", str(made.ca)]  # only a coordinator with the CA's certificate
            coordinator = [*own, "--tls-ca", str(made.ca)]
            http = ["--tls-ca", str(made.ca)]
        if c.api_key:
            key_file = self.log_dir / "api-key"
            key_file.touch(mode=0o600)
            key_file.write_text(c.api_key)
            coordinator += ["--api-key-file", str(key_file)]
            http += ["--api-key-file", str(key_file)]
        return replicas, coordinator, http

    @property
    def client_options(self) -> dict:
        """`Client` / `AsyncClient` arguments for this stack's coordinator (its CA, its API key)."""
        return {"api_key": self.config.api_key, "tls_ca": self.tls.ca if self.tls else None}

    def _spawn(self, name: str, args: list[str], port: int = 0) -> None:
        log_path, port_file = self.log_dir / f"{name}.log", self.log_dir / f"{name}.port"
        self.processes[name] = Process(name, "", self._launch(name, args, port, log_path, port_file), log_path,
                                       port_file, args)

    def _launch(self, name: str, args: list[str], port: int, log_path: Path, port_file: Path) -> subprocess.Popen:
        port_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "adaspec.cli", "serve", *args, "--port", str(port), "--port-file",
                   str(port_file)]
        if name.startswith(("verify", "draft")):
            command += ["--replica-id", name]
        if self.config.metrics:
            self._metrics_port_file(name).unlink(missing_ok=True)
            command += ["--metrics-port", "0", "--metrics-port-file", str(self._metrics_port_file(name))]
        with open(log_path, "ab") as log:
            # Own session: Ctrl-C reaches only `adaspec up`, which stops the services in order.
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    def replica_load(self, name: str, timeout_s: float = 5.0) -> common_pb2.ReplicaLoad:
        """Replica `name`'s own load, asked of it directly (`GetLoad`; not the store's copy, a heartbeat late)."""
        stub = verify_pb2_grpc.VerifyStub if name.startswith("verify") else draft_pb2_grpc.DraftStub
        with channel(self.processes[name].address, self.tls, aio=False) as replica:
            return stub(replica).GetLoad(common_pb2.GetLoadRequest(), timeout=timeout_s)

    def _metrics_port_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.metrics.port"

    def metrics_url(self, name: str, timeout_s: float = 10.0) -> str:
        """The scrape URL of service `name` (`StackConfig.metrics`); its endpoint starts just after its gRPC."""
        assert self.config.metrics, "StackConfig(metrics=True) serves metrics"
        path, deadline = self._metrics_port_file(name), time.monotonic() + timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not report its metrics endpoint within {timeout_s:.0f} s")
            time.sleep(0.05)
        return f"http://{path.read_text()}/metrics"

    def _learn_addresses(self) -> None:
        """Wait until every process started has written the address it bound (early: before its model loads)."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        for process in self.processes.values():
            while not process.address:
                if process.port_file.exists():
                    process.address = process.port_file.read_text()
                elif process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited with code {process.popen.returncode} while starting; "
                                       f"its log:\n{tail(process.log_path)}")
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"{process.name} did not report its address within "
                                       f"{self.config.ready_timeout_s:.0f} s")
                else:
                    time.sleep(0.05)

    async def _wait_ready(self) -> None:
        async def ready(process: Process) -> None:
            timeout_s = self.config.ready_timeout_s
            waiting = asyncio.ensure_future(
                wait_until_healthy(f"http://{process.address}/health", timeout_s) if process.name == "http"
                else wait_until_serving(process.address, timeout_s, tls=self.tls))
            while not waiting.done():
                if process.popen.poll() is not None:
                    waiting.cancel()
                    raise RuntimeError(f"{process.name} exited with code {process.popen.returncode} while starting; "
                                       f"its log:\n{tail(process.log_path)}")
                await asyncio.sleep(0.1)
            await waiting

        await asyncio.gather(*(ready(p) for p in self.processes.values()))
        # Let the coordinator see every replica through the load store before the first request.
        from adaspec.client import AsyncClient

        async with AsyncClient(self.address, **self.client_options) as client:
            expected = self.config.verify_replicas + self.config.draft_replicas
            deadline = time.monotonic() + 10
            while len(await client.cluster_state()) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

    def supervise(self) -> None:
        """One round of watching the processes (`adaspec up` calls it twice a second). A replica or the HTTP
        process that exited on its own is reported on stderr and, after the backoff, restarted with its arguments
        on the port it bound first (the coordinator, given that address, finds it again); with its restart budget
        spent it stays down. Raises StackDown when the coordinator exited: nothing is served without it.
        Processes `kill`ed (fault tests) are left alone."""
        c, now = self.config, time.monotonic()
        for process in self.processes.values():
            if process.name in self.killed or process.given_up or process.popen.poll() is None:
                continue
            exited = f"{process.name} exited with code {process.popen.returncode}"
            if process.name == "coordinator":
                raise StackDown(f"{exited}; end of its log:\n{tail(process.log_path, 20)}")
            if process.restart_at is None:  # just died
                recent = [t for t in process.restarts if now - t < c.restart_window_s]
                _report(f"{exited}; end of its log:\n{tail(process.log_path, 20)}")
                if len(recent) >= c.restart_budget:
                    process.given_up = True
                    _report(f"{process.name} stays down: {len(recent)} restarts in the last {c.restart_window_s:g} s "
                            f"spent its budget")
                else:
                    process.restart_at = now + c.restart_backoff_s * 2 ** len(recent)
                    _report(f"restarting {process.name} in {process.restart_at - now:g} s")
            elif now >= process.restart_at:
                process.restart_at = None
                process.restarts.append(now)
                port = int(process.address.rsplit(":", 1)[1])
                process.popen = self._launch(process.name, process.args, port, process.log_path, process.port_file)
                _report(f"{process.name} restarted on {process.address} (restart {len(process.restarts)}, "
                        f"pid {process.popen.pid})")

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crash, for fault tests); `supervise` does not restart it."""
        process = self.processes[name]
        self.killed.add(name)
        process.popen.kill()
        process.popen.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the HTTP API and the coordinator first (they drain requests), then the replicas. A process
        still running after `timeout_s` (above the services' 10 s grace) writes its threads' stacks to its log,
        then is SIGKILLed."""
        first = ("http", "coordinator")
        order = sorted(self.processes.values(), key=lambda p: first.index(p.name) if p.name in first else len(first))
        for process in order:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in order:
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
                process.popen.kill()
                process.popen.wait()
                self.overstayed.add(process.name)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def exit_codes(self) -> dict[str, int | None]:
        """Exit codes of the processes that were not killed (0 after a graceful `stop`)."""
        return {n: p.popen.returncode for n, p in self.processes.items() if n not in self.killed}

    def exit_report(self) -> str:
        """Why processes did not exit cleanly: each one's exit code and the end of its log."""
        lines = []
        for name, code in self.exit_codes().items():
            if code != 0:
                why = " (SIGKILLed: still running after SIGTERM)" if name in self.overstayed else ""
                lines.append(f"{name}: exit code {code}{why}; end of its log:\n{tail(self.processes[name].log_path)}")
        return "\n".join(lines)

    def __enter__(self) -> Stack:
        return self if self.processes else self.start()  # `with Stack(c).start() as s:` starts it once

    def __exit__(self, *exc) -> None:
        self.stop()


def _report(message: str) -> None:
    print(f"adaspec: {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
