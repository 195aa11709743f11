"""The FastAPI app: OpenAI's routes over one `adaspec.AsyncClient` to the coordinator.

    POST /v1/completions        POST /v1/chat/completions        GET /v1/models        GET /health

`/v1/*` requires `Authorization: Bearer <key>` when the app has an API key (compared in constant time);
`/health` never does, so that probes and `Stack` need no key. Every error, FastAPI's own included (a body
that fails validation, an unknown route), has OpenAI's error shape (`adaspec.http.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass

import grpc
import grpc.aio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException
from starlette.responses import Response

from adaspec.client import AsyncClient
from adaspec.http.chat_template import ChatTemplate
from adaspec.http.errors import ApiError, from_validation
from adaspec.http.generation import Generation
from adaspec.http.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from adaspec.service_runtime.server import CHANNEL_OPTIONS
from adaspec.service_runtime.transport_security import TlsFiles, channel

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 1.0
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer (seen in access logs)


@dataclass(frozen=True)
class HttpSettings:
    coordinator: str  # host:port
    model_name: str  # what /v1/models lists and requests must name (or leave out)
    chat_template: ChatTemplate
    api_key: str | None = None  # None: no authentication
    request_timeout_s: float | None = None  # each request's deadline at the coordinator (504 past it)
    max_retries: int = 0  # SDK retries before the first token; 0: the HTTP client's own retries decide
    coordinator_tls: TlsFiles | None = None  # dial the coordinator over TLS (mutual TLS with its certificate)


def create_app(settings: HttpSettings) -> FastAPI:
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # The SDK's channel and the health channel belong to the server's event loop: opened here, inside it.
        # The services' channel options: keepalive pings notice a coordinator that is gone; 16 MiB messages.
        # The deployment's one API key: asked of HTTP clients, and presented to the coordinator.
        tls = settings.coordinator_tls or TlsFiles()
        client = AsyncClient(settings.coordinator, timeout=settings.request_timeout_s, max_retries=settings.max_retries,
                             channel_options=CHANNEL_OPTIONS, api_key=settings.api_key, tls_ca=tls.ca,
                             tls_cert=tls.cert if tls.ca else None, tls_key=tls.key if tls.ca else None)
        async with client, channel(settings.coordinator, tls, CHANNEL_OPTIONS) as health_channel:
            app.state.client = client
            app.state.health = health_pb2_grpc.HealthStub(health_channel)
            yield

    app = FastAPI(title="AdaSpec OpenAI-compatible API", lifespan=lifespan)
    authorized = [Depends(_bearer_check(settings.api_key))]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return from_validation(error.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail), headers=error.headers).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets OpenAI's shape instead of a plain-text 500
        return ApiError(500, f"internal error: {type(error).__name__}", code="internal").response()

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 while the coordinator answers SERVING to gRPC health checking; 503 otherwise."""
        try:
            reply = await request.app.state.health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            why = "" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as error:
            serving, why = False, f"{error.code().name}: {error.details()}"
        if not serving:
            raise ApiError(503, f"coordinator {settings.coordinator} is not serving ({why})", code="unavailable")
        return JSONResponse({"status": "ok", "coordinator": settings.coordinator})

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name, created=created)])

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check(body, settings.model_name)
        generation = Generation(request.app.state.client, settings.model_name, body, body.single_prompt(),
                                chat=False)
        return await _cancel_on_disconnect(request, generation)

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _check(body, settings.model_name)
        prompt = settings.chat_template.render(body.conversation())
        generation = Generation(request.app.state.client, settings.model_name, body, prompt, chat=True)
        return await _cancel_on_disconnect(request, generation)

    return app


def _check(body: CompletionRequest | ChatCompletionRequest, model_name: str) -> None:
    if body.model is not None and body.model != model_name:
        raise ApiError(404, f"the model `{body.model}` does not exist; this server serves `{model_name}`",
                       param="model", code="model_not_found")
    body.check_supported()


def _bearer_check(api_key: str | None):
    """A dependency that lets a request through only with `Authorization: Bearer <api_key>` (any request when
    there is no key). The comparison takes the same time wherever the keys differ; the key is never logged."""
    expected = None if api_key is None else api_key.encode()

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)):
            raise ApiError(401, "missing or incorrect API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return check


async def _cancel_on_disconnect(request: Request, generation: Generation) -> Response:
    """The generation's response, cancelled if the client disconnects first (the SDK's call with it, so the
    coordinator closes both sessions). Starlette does this itself only while a streamed body is being sent;
    this covers the wait for a whole completion and for a stream's first token."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answering, watching = asyncio.ensure_future(generation.respond()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((answering, watching), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler is cancelled (the server is stopping): so is the answer
        answering.cancel()
        raise
    finally:
        watching.cancel()
    if answering.done():
        return answering.result()
    answering.cancel()
    await asyncio.wait((answering,))  # its cleanup (the call's cancel) runs before the handler returns
    log.info("client left; request cancelled", extra={"request_id": generation.request_id})
    return Response(status_code=CLIENT_CLOSED_REQUEST)
