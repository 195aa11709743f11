"""Output text grown token by token, decoding only a short window of recent tokens each time.

Decoding a request's whole output at every step costs O(n) per step, O(n^2) per request. Like vLLM
and TGI, this decodes only the tokens from `prefix_offset` on: the text of [prefix_offset, end) minus
the text of [prefix_offset, read_offset) is what the new tokens add, and the earlier tokens in the
window give the decoder its context (a word's leading space, byte-level merges). A window whose text
ends in U+FFFD (half of a multi-byte character) is held back until a later token completes it.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""  # final text so far: every token before `read_offset`
        self._prefix_offset = 0  # first token of the decoding window
        self._read_offset = 0  # tokens before this are in `text`

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (possibly empty, held back)."""
        self.token_ids += token_ids
        return self._read(final=False)

    def flush(self) -> str:
        """The request ended: release held-back text as it decodes (an incomplete character stays U+FFFD)."""
        return self._read(final=True)

    def _read(self, final: bool) -> str:
        if self._read_offset == len(self.token_ids):
            return ""
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        window = self._decode(self.token_ids[self._prefix_offset :])
        if window.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        new_text = window[len(prefix) :]
        self.text += new_text
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        return new_text

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens) if token_ids else ""
