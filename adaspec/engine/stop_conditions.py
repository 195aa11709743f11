"""When a request stops: a stop token or EOS, a stop string in the text, max_tokens or the context window."""

from __future__ import annotations

from adaspec.engine.model_loader import LoadedModel
from adaspec.engine.sequence import Sequence


def eos_token_ids(model: LoadedModel) -> set[int]:
    """Every token that ends a sequence for this model: its generation config's and its tokenizer's."""
    ids = model.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


def stop_reason(seq: Sequence, token: int, eos_ids: set[int], max_model_len: int) -> str | None:
    """"stop" or "length" if `token`, just appended to `seq`, ends it; None otherwise. A stop string found sets
    `seq.stop_text_index` (where the text is cut); the text is searched only from where the last search ended,
    less a stop string's length."""
    params = seq.params
    if token in params.stop_token_ids or (not params.ignore_eos and token in eos_ids):
        return "stop"
    if params.stop:
        seq.output_text.add([token])
        text = seq.output_text.text
        scan_from = max(0, seq.stop_scan_from - max(map(len, params.stop)) + 1)
        hits = [i for s in params.stop if (i := text.find(s, scan_from)) >= 0]
        seq.stop_scan_from = len(text)
        if hits:
            seq.stop_text_index = min(hits)
            return "stop"
    if seq.num_output_tokens >= params.max_tokens or len(seq.token_ids) >= max_model_len:
        return "length"
    return None
