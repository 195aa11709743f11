"""Structured logs: one JSON object per line, with the service name, any `extra=` fields, and the trace and span
ids of the span current where the line was logged (with tracing on: `adaspec.service_runtime.tracing`)."""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import sys
import time

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"], entry["span_id"] = f"{span.trace_id:032x}", f"{span.span_id:016x}"
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "info") -> None:
    """JSON lines on stderr; SIGUSR1 writes every thread's stack there too (what `Stack.stop` asks of a
    service that does not exit in time, before it kills it)."""
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
