"""Incremental detokenization: the same text as decoding the whole output, for a bounded cost per token."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from adaspec.engine.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from adaspec.engine.paths import BUNDLED_TARGET
from adaspec.service_runtime.streaming_detokenizer import StreamingDetokenizer

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Grüße aus Köln — naïve café, 東京タワー and 🙂🚀 emoji; tabs\tand  double  spaces.",
    "  leading spaces, trailing newline\n\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED_TARGET)


class CountingTokenizer:
    """Records the length of every decode call."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def decode(self, token_ids, **kwargs):
        self.lengths.append(len(token_ids))
        return self.tokenizer.decode(token_ids, **kwargs)


def token_streams(tokenizer) -> list[list[int]]:
    rng = random.Random(0)
    natural = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    noise = [[rng.randrange(len(tokenizer)) for _ in range(300)] for _ in range(10)]  # broken UTF-8 included
    return natural + noise


def test_incremental_text_equals_full_decode(tokenizer):
    rng = random.Random(1)
    for ids in token_streams(tokenizer):
        detok = IncrementalDetokenizer(tokenizer)
        streamed, i = "", 0
        while i < len(ids):
            n = rng.randint(1, 4)
            chunk = detok.add(ids[i : i + n])
            assert not chunk.endswith(REPLACEMENT_CHAR), "half a character went out before the end"
            streamed, i = streamed + chunk, i + n
        streamed += detok.flush()
        assert streamed == detok.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_half_a_character_is_held_back(tokenizer):
    ids = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the emoji should take several byte-level tokens"
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add([t]) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "🙂"


def test_cost_per_token_is_bounded(tokenizer):
    ids = tokenizer(TEXTS[0] * 40, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)
    for token in ids:
        detok.add([token])
    assert len(ids) > 800
    assert max(counting.lengths) <= 4, "each step decodes a short window, not the whole output"
    assert detok.text == tokenizer.decode(ids)


def test_streaming_holds_back_a_possible_stop_string(tokenizer):
    ids = tokenizer("alpha beta STOP gamma", add_special_tokens=False)["input_ids"]
    full = tokenizer.decode(ids)
    stream = StreamingDetokenizer(tokenizer, stop=[" STOP"])
    released = ""
    for i, token in enumerate(ids):
        text = tokenizer.decode(ids[: i + 1])
        if " STOP" in text:  # the engine finishes the request on this token
            released += stream.add([token], finished=True, stop_text_index=text.index(" STOP"))
            break
        released += stream.add([token], finished=False)
        assert not released.endswith((" ", " S", " ST", " STO")), "a prefix of the stop string went out"
    assert released == full[: full.index(" STOP")] == "alpha beta"


def test_a_resumed_stream_releases_exactly_the_rest(tokenizer):
    """A session resumes a stream another one started (after a replica failure): what the first released
    plus what the second releases is the whole text, held-back stop prefix included."""
    ids = tokenizer("alpha beta ST and more text", add_special_tokens=False)["input_ids"]
    full = tokenizer.decode(ids)
    cut = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith(" ST"))
    first = StreamingDetokenizer(tokenizer, stop=[" STOP"])
    released = "".join(first.add([t], finished=False) for t in ids[:cut])
    assert released == "alpha beta", "the stop prefix is held back"
    second = StreamingDetokenizer(tokenizer, stop=[" STOP"])
    second.resume(ids[:cut], chars_sent=len(released))
    released += "".join(second.add([t], finished=False) for t in ids[cut:-1])
    released += second.add(ids[-1:], finished=True)
    assert released == full
