"""Streaming text for a session's output tokens.

Text is released only once it is final: half of a multi-byte character (held back by the incremental
detokenizer) and any tail that could still grow into a stop string are held back until the next tokens
or the end of the request, so a client never receives text that a stop string later removes.
"""

from __future__ import annotations

from adaspec.engine.detokenizer import IncrementalDetokenizer


class StreamingDetokenizer:
    def __init__(self, tokenizer, stop: list[str]):
        self.output = IncrementalDetokenizer(tokenizer)
        self.stop = stop
        self.sent = 0  # characters of the output text already released

    def resume(self, token_ids: list[int], chars_sent: int) -> None:
        """Continue a stream another session started: `token_ids` already generated, `chars_sent` of their
        text already released."""
        self.output.add(token_ids)
        self.sent = chars_sent

    def add(self, token_ids: list[int], finished: bool, stop_text_index: int | None = None) -> str:
        """Append committed tokens; return the newly final text."""
        self.output.add(token_ids)
        if finished:
            self.output.flush()
            text = self.output.text
            end = stop_text_index if stop_text_index is not None else len(text)
        else:
            text = self.output.text
            end = len(text) - self._held_back(text)
        if end <= self.sent:
            return ""
        delta, self.sent = text[self.sent : end], end
        return delta

    def _held_back(self, text: str) -> int:
        hold = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        return hold
