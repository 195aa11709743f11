"""TLS, mutual TLS and the API key: how a service listens and how it dials, from its flags.

Listening (every service): `--tls-cert` and `--tls-key` serve TLS; with `--tls-client-ca` too, mutual TLS:
a caller must present a certificate signed by that CA (replicas require it of coordinators).
Dialing (the coordinator to replicas, `adaspec healthcheck`, the HTTP API to its coordinator): `--tls-ca`
verifies the server's certificate, and the process's own `--tls-cert` / `--tls-key`, when given, are presented
as its client certificate. Without any of them, plaintext (the services bind to loopback by default).

The API key (`--api-key-file`, or `ADASPEC_API_KEY`): the coordinator's public methods require
`authorization: Bearer <key>` (UNAUTHENTICATED otherwise); health checks stay open for probes. The key is
compared in constant time and never logged.
"""

from __future__ import annotations

import argparse
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from adaspec.errors import abort

API_KEY_ENV = "ADASPEC_API_KEY"


@dataclass(frozen=True)
class TlsFiles:
    cert: str | None = None  # this process's certificate chain (PEM): served, and presented when dialing
    key: str | None = None  # its private key (PEM)
    ca: str | None = None  # CA bundle that signs the servers this process dials
    client_ca: str | None = None  # CA bundle that signs the clients this server accepts (mutual TLS)

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key")
        for name in ("cert", "key", "ca", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"--tls-{name.replace('_', '-')}: no such file: {path}")

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    @property
    def dials_tls(self) -> bool:
        return self.ca is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.serves_tls:
            return None
        pair = [(_read(self.key), _read(self.cert))]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(pair, root_certificates=_read(self.client_ca),
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.dials_tls:
            return None
        client = (_read(self.key), _read(self.cert)) if self.cert is not None else (None, None)
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca), private_key=client[0],
                                            certificate_chain=client[1])


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def add_security_args(parser: argparse.ArgumentParser) -> None:
    """A gRPC service's flags: TLS, mutual TLS, reflection."""
    add_tls_args(parser)
    parser.add_argument("--no-reflection", action="store_true", help="do not serve gRPC server reflection")


def add_tls_args(parser: argparse.ArgumentParser, serves: bool = True) -> None:
    """`serves`: the process listens (a service) and may require client certificates; else it only dials."""
    if serves:
        parser.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM); also presented as the "
                                               "client certificate where this process dials over TLS")
    else:
        parser.add_argument("--tls-cert", help="a client certificate chain to present (PEM; with --tls-ca)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument("--tls-ca", help="dial over TLS, verifying servers against this CA bundle (PEM)")
    if serves:
        parser.add_argument("--tls-client-ca", help="mutual TLS: accept only clients whose certificate this CA signed")


def tls_from_args(args: argparse.Namespace) -> TlsFiles:
    return TlsFiles(getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None),
                    getattr(args, "tls_client_ca", None))


def channel(address: str, tls: TlsFiles | None = None, options=None, aio: bool = True):
    """A channel to `address`: over TLS when `tls` verifies servers, else plaintext."""
    module = grpc.aio if aio else grpc
    credentials = tls.channel_credentials() if tls is not None else None
    if credentials is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, credentials, options=options)


def read_api_key(path: str | None) -> str | None:
    """The key in file `path` (surrounding whitespace dropped), else `$ADASPEC_API_KEY`, else None (no auth)."""
    if path:
        key = Path(path).read_text().strip()
        if not key:
            raise ValueError(f"API key file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def bearer(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `api_key`."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class RequireApiKey(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for calls to `services` (full names) without `authorization: Bearer <key>`."""

    def __init__(self, api_key: str, services: list[str]):
        self._expected = f"Bearer {api_key}".encode()
        self._prefixes = tuple(f"/{service}/" for service in services)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return handler
        reason = ("missing the authorization metadata (Bearer <API key>)" if not given
                  else "the API key is not valid")
        return _refusal(handler, reason)


def _refusal(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by an UNAUTHENTICATED refusal (its shape kept)."""

    async def refuse(request, context):
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, reason)

    async def refuse_stream(request, context):
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, reason)
        yield  # pragma: no cover - an async generator, as streaming handlers are

    kinds = {"unary_unary": refuse, "stream_unary": refuse, "unary_stream": refuse_stream,
             "stream_stream": refuse_stream}
    return handler._replace(**{kind: behavior for kind, behavior in kinds.items() if getattr(handler, kind)})
