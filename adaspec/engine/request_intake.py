"""A request as the engine takes it in: its SLOs and prompt checked, the prompt tokenised, the output it already
has elsewhere (a failed replica's) replayed, and the KV room it may need at most (what the scheduler reserves when
it admits the request) checked against the caches.

Every check raises ValueError (KVCacheExhausted for room) naming the field, before the request touches any cache.
"""

from __future__ import annotations

from collections.abc import Iterable

from adaspec.engine.kv_cache import BlockManager, KVCacheExhausted
from adaspec.engine.sequence import Sequence, check_token_ids


def check_slos(ttft_ms: float | None, tpot_ms: float | None) -> None:
    for name, value in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")


def prompt_token_ids(prompt: str | list[int], tokenizer, vocab_size: int, max_model_len: int) -> list[int]:
    """The prompt's token ids (text is tokenised); it must leave room for one new token in the context."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty")
        ids = tokenizer(prompt)["input_ids"]
    else:
        ids = list(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        check_token_ids(ids, vocab_size, "prompt token ids")
    if len(ids) >= max_model_len:
        raise ValueError(f"prompt has {len(ids)} tokens; the context is {max_model_len} tokens and the prompt "
                         f"must leave room for at least one new token")
    return ids


def resume(seq: Sequence, output_ids: list[int], vocab_size: int, max_model_len: int) -> None:
    """Append the tokens the request already generated, as if this engine had: they count toward max_tokens and
    the stop strings' search."""
    check_token_ids(output_ids, vocab_size, "resumed output token ids")
    if len(output_ids) >= seq.params.max_tokens or len(seq.token_ids) + len(output_ids) >= max_model_len:
        raise ValueError(f"resumed output of {len(output_ids)} tokens leaves nothing to generate "
                         f"(max_tokens {seq.params.max_tokens}, context {max_model_len})")
    seq.token_ids += output_ids
    if seq.output_text is not None:
        seq.output_text.add(output_ids)
        seq.stop_scan_from = len(seq.output_text.text)


def reserve_tokens(seq: Sequence, max_model_len: int, max_spec_len: int) -> int:
    """The most tokens the request may hold in a cache: its final length, plus a step's drafts if it drafts."""
    final_len = min(seq.num_prompt_tokens + seq.params.max_tokens, max_model_len)
    return final_len + (max_spec_len if seq.policy.uses_draft else 0)


def check_fits(need: int, caches: Iterable[BlockManager]) -> None:
    """Raise KVCacheExhausted if `need` tokens could never fit one of the caches, even empty."""
    for blocks in caches:
        if blocks.blocks_for(need) > blocks.num_blocks:
            raise KVCacheExhausted(
                f"request needs {blocks.blocks_for(need)} KV blocks ({need} tokens) but the cache holds only "
                f"{blocks.num_blocks} blocks of {blocks.block_size} tokens; raise kv_cache_memory or lower max_tokens"
            )
