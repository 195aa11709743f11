"""A request message that does not decode (corrupt protobuf, invalid UTF-8 in a string field) gets
INVALID_ARGUMENT naming the method, its message type and what is wrong, on every method of every service.

gRPC decodes a request before its handler runs, and a message that fails to decode ends the call with a
generic status (a client cannot tell a corrupt request from a server fault) and an error in the server's
log. This interceptor hands each handler the raw bytes and decodes them itself, before the handler runs
(a request stream: each message as the handler reads it).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from adaspec.errors import abort

Decode = Callable[[bytes], Any]


class RejectUndecodableRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode, method = handler.request_deserializer, handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=None, unary_unary=_unary_unary(handler.unary_unary, decode,
                                                                                        method))
        if handler.unary_stream is not None:
            return handler._replace(request_deserializer=None, unary_stream=_unary_stream(handler.unary_stream, decode,
                                                                                          method))
        if handler.stream_unary is not None:
            return handler._replace(request_deserializer=None, stream_unary=_stream_in(handler.stream_unary, decode,
                                                                                       method))
        return handler._replace(request_deserializer=None, stream_stream=_stream_in(handler.stream_stream, decode,
                                                                                    method))


async def _decode(decode: Decode, raw: bytes, context, method: str):
    try:
        return decode(raw)
    except DecodeError as error:  # "Error parsing message with type '...': String field had bad UTF-8"
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request does not decode: {error}")


def _unary_unary(behavior, decode: Decode, method: str):
    async def handle(raw: bytes, context):
        return await behavior(await _decode(decode, raw, context, method), context)

    return handle


def _unary_stream(behavior, decode: Decode, method: str):
    if inspect.isasyncgenfunction(behavior):
        async def handle_stream(raw: bytes, context):
            async for reply in behavior(await _decode(decode, raw, context, method), context):
                yield reply

        return handle_stream

    async def handle(raw: bytes, context):  # a handler that writes its replies with `context.write`
        return await behavior(await _decode(decode, raw, context, method), context)

    return handle


def _stream_in(behavior, decode: Decode, method: str):
    async def decoded(raw_requests: AsyncIterator[bytes], context):
        async for raw in raw_requests:
            yield await _decode(decode, raw, context, method)

    if inspect.isasyncgenfunction(behavior):
        async def handle_stream(raw_requests, context):
            async for reply in behavior(decoded(raw_requests, context), context):
                yield reply

        return handle_stream

    async def handle(raw_requests, context):
        return await behavior(decoded(raw_requests, context), context)

    return handle
