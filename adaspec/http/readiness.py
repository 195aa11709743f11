"""Waiting for an HTTP API process to be ready: what `Stack` does for it, as `wait_until_serving` for the
gRPC services. Standard library only, so that importing it costs nothing."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request


async def wait_until_healthy(url: str, timeout_s: float = 60.0) -> None:
    """Poll `url` (the process's `/health`) until it answers 200: the server is up and its coordinator serves."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await asyncio.to_thread(_answers_200, url):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # not listening yet, or 503 while the coordinator does not serve
        return False
