"""Server-sent events as OpenAI streams them: `data: {json}` events, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def event(data: BaseModel | dict[str, Any]) -> str:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {payload}\n\n"


class EventStream(StreamingResponse):
    """A `text/event-stream` response that closes its generator however the response ends.

    Starlette cancels the response when the client disconnects; the cancellation lands in the generator only
    when it is waiting for the next token. When it lands while an event is being written, the generator is
    left suspended, and would be closed only when collected. Closing it here runs its cleanup at once (the
    gRPC call is cancelled, so the coordinator closes both sessions and their KV blocks now).
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        # no-cache: proxies must not hold the stream back; X-Accel-Buffering: nginx must not buffer it
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.events.aclose()
