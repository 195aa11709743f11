"""The standard OpenTelemetry variables, read alike for traces and metrics: whether a signal is exported (off by
default), by which exporters, and the resource that names the service.

A signal ("traces" or "metrics") is exported when `OTEL_<SIGNAL>_EXPORTER` names an exporter, or, that variable
unset, when an OTLP endpoint is set for it (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`);
never with `OTEL_SDK_DISABLED=true` or `OTEL_<SIGNAL>_EXPORTER=none`. The SDK reads the rest itself (endpoints,
TLS, headers, intervals, `OTEL_RESOURCE_ATTRIBUTES`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK loads once a signal is exported: the client library imports this module too
    from opentelemetry.sdk.resources import Resource

SUPPORTED_EXPORTERS = frozenset({"otlp", "console"})


def export_requested(signal: str, env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))


def exporters(signal: str, env: Mapping[str, str] = os.environ) -> set[str]:
    """The exporters `OTEL_<SIGNAL>_EXPORTER` names (default `otlp`); ValueError for one this project lacks."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    named = {e.strip().lower() for e in env.get(variable, "otlp").split(",") if e.strip()}
    unknown = named - SUPPORTED_EXPORTERS
    if unknown:
        raise ValueError(f"{variable}: {', '.join(sorted(unknown))} is not supported (otlp, console)")
    return named


def service_resource(service: str) -> Resource:
    """The resource of `service`'s telemetry: `OTEL_SERVICE_NAME`, else `adaspec-<service>`, and
    `OTEL_RESOURCE_ATTRIBUTES` (read by `Resource.create`)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    return Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"adaspec-{service}"})
