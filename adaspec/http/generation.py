"""One OpenAI completion or chat completion request, run through the SDK and answered in OpenAI's shape.

Not streamed: `AsyncClient.generate`, then one JSON body. Streamed: the SDK's stream is started and its first
chunk awaited before the response begins, so that a request refused before its first token (a bad field, no
capacity, no replica) gets its own HTTP status, as OpenAI answers; an error after that can only be an event of
the stream (`data: {"error": ...}`, then `data: [DONE]`). Leaving the stream early, for any reason, closes
the SDK's stream, which cancels the gRPC call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import JSONResponse
from starlette.responses import Response

from adaspec.client import AsyncClient, Chunk
from adaspec.client import Completion as SdkCompletion
from adaspec.errors import AdaSpecError
from adaspec.http.errors import ApiError, from_adaspec
from adaspec.http.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    GenerationRequest,
    Stats,
    Usage,
)
from adaspec.http.sse import DONE, EventStream, event

log = logging.getLogger(__name__)


class Generation:
    """`request` for `prompt` (already rendered from the messages for a chat), answered as a text completion
    or, with `chat`, a chat completion. The coordinator's request id is this server's: the response `id` is
    `cmpl-<request id>` (`chatcmpl-` for chat), the same id as in `adaspec.request_id` and the services' logs."""

    def __init__(self, client: AsyncClient, model: str, request: GenerationRequest, prompt: str | list[int],
                 *, chat: bool) -> None:
        self.client, self.model, self.request, self.prompt, self.chat = client, model, request, prompt, chat
        self.request_id = uuid.uuid4().hex[:16]
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{self.request_id}"
        self.created = int(time.time())
        # the coordinator's field names in this request's terms
        self.renames = {"prompt": "messages" if chat else "prompt", "max_tokens": request.max_tokens_field()[0]}

    def _error(self, error: AdaSpecError) -> ApiError:
        return from_adaspec(error, self.renames)

    async def respond(self) -> Response:
        arguments = dict(self.request.sdk_arguments(), request_id=self.request_id)
        if not self.request.stream:
            try:
                completion = await self.client.generate(self.prompt, **arguments)
            except AdaSpecError as error:
                raise self._error(error) from error
            return JSONResponse(self._body(completion).model_dump(mode="json"))
        try:
            chunks = self.client.stream(self.prompt, **arguments)  # checks the arguments at once
            first = await anext(chunks)
        except AdaSpecError as error:
            raise self._error(error) from error
        return EventStream(self._events(first, chunks))

    def _body(self, completion: SdkCompletion) -> Completion | ChatCompletion:
        stats = _stats(completion.stats)
        usage = Usage.of(stats) if stats else None
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=completion.text),
                                finish_reason=completion.finish_reason)
            return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage,
                                  adaspec=stats)
        return Completion(id=self.id, created=self.created, model=self.model, usage=usage, adaspec=stats,
                          choices=[CompletionChoice(text=completion.text, finish_reason=completion.finish_reason)])

    async def _events(self, first: Chunk, chunks: AsyncIterator[Chunk]) -> AsyncGenerator[str, None]:
        ended = False
        try:
            async with contextlib.aclosing(chunks):
                if self.chat:  # OpenAI's first chat chunk names the role
                    yield event(self._chunk({"role": "assistant", "content": ""}))
                try:
                    chunk: Chunk | None = first
                    while chunk is not None:
                        if chunk.text:
                            yield event(self._chunk({"content": chunk.text} if self.chat else chunk.text))
                        if chunk.finish_reason:
                            stats = _stats(chunk.stats)
                            yield event(self._chunk({} if self.chat else "", chunk.finish_reason, stats))
                            if self.request.include_usage and stats:
                                yield event(self._chunk(None, usage=Usage.of(stats)))
                        chunk = await anext(chunks, None)
                except AdaSpecError as error:
                    yield event(self._error(error).body())
            ended = True
            yield DONE
        finally:
            if not ended:  # closed or cancelled before the request's end: the client left
                log.info("client left mid-stream; request cancelled", extra={"request_id": self.request_id})

    def _chunk(self, content: dict[str, str] | str | None, finish_reason: str | None = None,
               stats: Stats | None = None, usage: Usage | None = None) -> Completion | ChatCompletionChunk:
        """One chunk: `content` is the chat delta or the completion text; None for the usage chunk, which
        has no choices (as OpenAI sends it with `stream_options.include_usage`)."""
        if self.chat:
            choices = [] if content is None else [ChatChunkChoice(delta=content, finish_reason=finish_reason)]
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                       usage=usage, adaspec=stats)
        choices = [] if content is None else [CompletionChoice(text=content, finish_reason=finish_reason)]
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage,
                          adaspec=stats)


def _stats(stats) -> Stats | None:
    return dataclasses.asdict(stats) if stats is not None else None
