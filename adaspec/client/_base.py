"""Settings shared by Client and AsyncClient."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from adaspec.client._retry import Attempts

DEFAULT_ADDRESS = "127.0.0.1:50051"  # where `adaspec up` and `adaspec serve coordinator` listen by default


class ClientBase:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, max_retries: int = 3,
                 channel_options: Sequence[tuple[str, Any]] | None = None, initial_backoff: float = 0.1,
                 max_backoff: float = 2.0) -> None:
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
        self._rng = random.Random()

    def _attempts(self, timeout: float | None) -> Attempts:
        """The retry budget of one call; `timeout` (seconds, the whole call) defaults to the client's."""
        return Attempts(self.timeout if timeout is None else timeout, self.max_retries, self.initial_backoff,
                        self.max_backoff, self._rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}, timeout={self.timeout}, max_retries={self.max_retries})"
