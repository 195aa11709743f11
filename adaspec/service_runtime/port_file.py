"""`--port-file`: how a service started on `--port 0` tells its launcher (`adaspec.stack`) the port it bound.

The system picks a free port as the service binds it, so no other process can take the port in between, as it
could when the launcher picked a free port and passed it on. Standard library only: the HTTP API imports it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_port_file_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port-file", help="write the bound HOST:PORT to this file once bound (what `--port 0` "
                                            "chose), for a launcher to read")


def write_address(path: str | None, address: str) -> None:
    """Write `address` to `path` (nothing without a path), atomically: a reader sees the whole address or no file."""
    if path is None:
        return
    partial = Path(f"{path}.partial")
    partial.write_text(address)
    os.replace(partial, path)
