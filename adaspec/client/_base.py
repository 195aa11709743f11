"""Settings shared by Client and AsyncClient."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from adaspec.client._retry import Attempts
from adaspec.service_runtime.transport_security import TlsFiles, bearer, read_api_key

DEFAULT_ADDRESS = "127.0.0.1:50051"  # where `adaspec up` and `adaspec serve coordinator` listen by default


class ClientBase:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, max_retries: int = 3,
                 channel_options: Sequence[tuple[str, Any]] | None = None, initial_backoff: float = 0.1,
                 max_backoff: float = 2.0, api_key: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        """`api_key`: sent as `authorization: Bearer` (default: `$ADASPEC_API_KEY`, if set); `tls_ca`: connect
        over TLS, verifying the coordinator against this CA bundle (PEM file); `tls_cert` / `tls_key`: a client
        certificate, where the coordinator requires one."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout}")
        self.address = address
        self.timeout = timeout
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        options = list(channel_options or ())
        if not any(key == "grpc.primary_user_agent" for key, _ in options):
            from adaspec import __version__

            options.append(("grpc.primary_user_agent", f"adaspec-python/{__version__}"))
        self._channel_options = options
        self._tls = TlsFiles(cert=tls_cert, key=tls_key, ca=tls_ca)
        if self._tls.cert is not None and self._tls.ca is None:
            raise ValueError("tls_cert and tls_key need tls_ca (the CA that signs the coordinator's certificate)")
        self._metadata = bearer(api_key if api_key is not None else read_api_key(None))
        self._rng = random.Random()

    def _attempts(self, timeout: float | None) -> Attempts:
        """The retry budget of one call; `timeout` (seconds, the whole call) defaults to the client's."""
        return Attempts(self.timeout if timeout is None else timeout, self.max_retries, self.initial_backoff,
                        self.max_backoff, self._rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}, timeout={self.timeout}, max_retries={self.max_retries})"
