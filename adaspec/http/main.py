"""`adaspec serve http`: the OpenAI-compatible HTTP API (FastAPI on uvicorn) in front of a coordinator.

Arguments are declared without importing FastAPI or uvicorn (the CLI builds every parser); they load on start.
Like every AdaSpec service: JSON logs on stderr, and on SIGTERM or SIGINT it drains and exits 0
(`adaspec.http.server`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from adaspec.client._base import DEFAULT_ADDRESS
from adaspec.service_runtime.metrics import add_metrics_args
from adaspec.service_runtime.port_file import add_port_file_arg
from adaspec.service_runtime.transport_security import API_KEY_ENV, add_tls_args, read_api_key, tls_from_args

DEFAULT_PORT = 8000

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", default=DEFAULT_ADDRESS, help="the coordinator's HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    add_port_file_arg(parser)
    parser.add_argument("--tokenizer",
                        help="the target's checkpoint or tokenizer directory, for its chat template and model name "
                             "(default: the bundled tiny-target)")
    parser.add_argument("--served-model-name",
                        help="the model name of /v1/models and of requests (default: the tokenizer directory's name)")
    parser.add_argument("--api-key", help=f"require `Authorization: Bearer KEY` on /v1 (visible in ps: prefer "
                                          f"--api-key-file or ${API_KEY_ENV})")
    parser.add_argument("--api-key-file", help="read the API key from this file (surrounding whitespace dropped)")
    parser.add_argument("--request-timeout", type=float,
                        help="seconds each request may take at the coordinator (504 past it; default: no limit)")
    parser.add_argument("--max-retries", type=int, default=0,
                        help="SDK retries before the first token on UNAVAILABLE / RESOURCE_EXHAUSTED (default 0: "
                             "answer 503 / 429 with Retry-After and let the HTTP client retry)")
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: at most this long to drain and stop")
    # --tls-cert / --tls-key: HTTPS (--tls-client-ca: and client certificates); --tls-ca: TLS to the coordinator
    add_tls_args(parser)
    add_metrics_args(parser)  # the process's own (CPU, memory, file descriptors): requests are the coordinator's
    parser.add_argument("--log-level", default="info")


def api_key(args) -> str | None:
    """`--api-key`, else the contents of `--api-key-file`, else `$ADASPEC_API_KEY`, else None (no auth)."""
    return args.api_key if args.api_key is not None else read_api_key(args.api_key_file)


def main(args) -> None:
    from adaspec.engine.paths import BUNDLED_TARGET
    from adaspec.http.app import HttpSettings, create_app
    from adaspec.http.chat_template import ChatTemplate
    from adaspec.http.server import serve
    from adaspec.service_runtime.logs import configure_logging
    from adaspec.service_runtime.metrics import new_registry, serve_metrics
    from adaspec.service_runtime.tracing import configure_tracing, instrument_http_app

    configure_logging("http", args.log_level)
    configure_tracing("http")
    serve_metrics(new_registry(), args.host, args.metrics_port, args.metrics_port_file)  # a daemon thread
    tokenizer = Path(args.tokenizer) if args.tokenizer else BUNDLED_TARGET
    settings = HttpSettings(coordinator=args.coordinator, model_name=args.served_model_name or tokenizer.name,
                            chat_template=ChatTemplate.load(tokenizer), api_key=api_key(args),
                            request_timeout_s=args.request_timeout, max_retries=args.max_retries,
                            coordinator_tls=tls_from_args(args))
    log.info("starting", extra={"address": f"{args.host}:{args.port}", "coordinator": args.coordinator,
                                "model": settings.model_name, "chat_template": settings.chat_template.kind,
                                "auth": settings.api_key is not None})
    app = create_app(settings)
    instrument_http_app(app)
    serve(app, args.host, args.port, grace_s=args.grace_s, log_level=args.log_level,
          port_file=args.port_file, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
