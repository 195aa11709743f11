"""uvicorn as an AdaSpec service runs: JSON logs, and a signal drains the server and returns.

uvicorn's own signal handling raises the signal again once the server has stopped, so the process would end
killed by SIGTERM (exit code -15) after a clean drain; every AdaSpec service exits 0 then (what `Stack` and
container runtimes read as a clean stop). Draining is uvicorn's: the listening socket closes (new
connections are refused, as a gRPC service's health goes NOT_SERVING), requests in flight run to their end,
and past `grace_s` they are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

import uvicorn
from starlette.types import ASGIApp

from adaspec.service_runtime.port_file import write_address

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._drain, sig)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def _drain(self, sig: int) -> None:
        log.info("draining", extra={"signal": signal.Signals(sig).name})
        self.should_exit = True


def serve(app: ASGIApp, host: str, port: int, *, grace_s: float, log_level: str = "info",
          port_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
          tls_client_ca: str | None = None) -> None:
    """Run `app` until SIGTERM or SIGINT, then drain for at most `grace_s` seconds. Logging is the caller's
    (`configure_logging`): uvicorn's loggers propagate to it. The socket is bound here rather than in uvicorn's
    startup, so that the port bound (the system's choice for `port` 0) goes to `port_file` before serving.
    With `tls_cert` and `tls_key`, HTTPS; with `tls_client_ca` too, clients must present a certificate it signed."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_color_message)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, log_level=log_level.lower(),
                            timeout_graceful_shutdown=grace_s, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            ssl_ca_certs=tls_client_ca,
                            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE)
    sock = config.bind_socket()
    address = f"{host}:{sock.getsockname()[1]}"
    write_address(port_file, address)
    asyncio.run(DrainingServer(config).serve(sockets=[sock]))
    log.info("stopped", extra={"address": address})


def _drop_color_message(record: logging.LogRecord) -> bool:
    """uvicorn attaches an ANSI-coloured copy of each message as `color_message`: not for JSON logs."""
    record.__dict__.pop("color_message", None)
    return True
