"""`adaspec.kernels.sampling.processed_probs` for the target rows in Triton, without materialising p.

`target_row_stats_kernel` reduces each target row to a few numbers from which any p(v) is one logit
away (`target_prob`): the max scaled logit, 1 / (sum of exp over the kept tokens), and the keep
threshold, an order-preserving int32 key of the smallest kept scaled logit s (`float_key`). Greedy
rows get the argmax of the raw logits instead.

The top-k / top-p rule is `adaspec.kernels.sampling`'s (ties are kept together). Both filters are one
predicate over the data values v of the row:

    kept(v)  <=>  stat(s > v) < limit,    stat = count (limit = k)  or  mass exp(s - max) (limit = top_p * Z)

kept is upward closed, so the threshold is the smallest kept data value; `threshold_search` finds it
exactly without sorting, by a bucketed search over the keys: each pass splits the current key
interval [lo, hi) into NUM_BUCKETS buckets, accumulates count, mass, min key and max key per bucket,
and keeps the lowest non-empty bucket whose maximum is kept, shrunk to its [min key, max key]. It ends
when that bucket holds a single distinct value. Each pass is one read of the row; the key range
shrinks ~16x per pass (and snaps to the data), so about 9 passes at most for 32-bit keys; on Gaussian,
Gumbel-like and bf16-quantised logits of 32k-152k tokens top-k 50 took 4-6 passes and top-p 0.9 took
3-7. After MAX_SEARCH_PASSES it stops at the bucket's min key: the kept set may then hold a few extra
tokens (never fewer). Top-p runs after top-k, over the keys top-k kept, with Z their mass.
"""

from __future__ import annotations

import triton
import triton.language as tl

NUM_BUCKETS = tl.constexpr(16)
MAX_SEARCH_PASSES = tl.constexpr(12)
INT32_MIN = tl.constexpr(-(2**31))
INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def request_span(cu_num_draft_ptr, req):
    """(index of request req's first draft token, its number of draft tokens k_req).

    cu_num_draft_ptr: [batch] int64, inclusive cumulative k_i. Request req's target rows are
    start + req + j for j = 0..k_req (drafts, then the bonus position).
    """
    end = tl.load(cu_num_draft_ptr + req)
    start = tl.load(cu_num_draft_ptr + req - 1, mask=req > 0, other=0)
    return start, end - start


@triton.jit
def row_temperature(temperature_ptr, req):
    """Request req's temperature as fp32 (temperature_ptr: [batch]); <= 0 (greedy) means 1, as in the reference."""
    temperature = tl.load(temperature_ptr + req).to(tl.float32)
    return tl.where(temperature > 0, temperature, 1.0)


@triton.jit
def scaled_logits(row_ptr, offs, vocab, temperature):
    """[BLOCK] fp32 logits / temperature at offs ([BLOCK]) of the row (row_ptr: [vocab]); -inf past vocab.

    div_rn: bit-identical to torch's fp32 division.
    """
    x = tl.load(row_ptr + offs, mask=offs < vocab, other=-float("inf")).to(tl.float32)
    return tl.math.div_rn(x, temperature)


@triton.jit
def float_key(s):
    """int32 keys with the order of the fp32 values s (any shape): negative floats flip the magnitude bits."""
    bits = s.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def target_prob(scaled, row_max, inv_sum, threshold):
    """p at scaled logits `scaled` (any shape) of a row with the given `target_row_stats_kernel` stats."""
    return tl.where(float_key(scaled) >= threshold, tl.exp(scaled - row_max) * inv_sum, 0.0)


@triton.jit
def running_argmax(values, tile_start, best, best_index):
    """Fold one tile's values ([BLOCK], starting at index tile_start) into a running (max, first argmax).

    Ties go to the lowest index, as torch.argmax: leftmost inside the tile, earlier tiles across tiles.
    """
    tile_best, tile_index = tl.max(values, axis=0, return_indices=True, return_indices_tie_break_left=True)
    best_index = tl.where(tile_best > best, tile_start + tile_index, best_index)
    return tl.maximum(best, tile_best), best_index


@triton.jit
def threshold_search(row_ptr, vocab, temperature, row_max, lo, hi, limit,
                     BY_MASS: tl.constexpr, BLOCK: tl.constexpr):
    """(smallest data key t in [lo, hi) with stat(key > t) < limit, mass(key >= t)).

    row_ptr: the row's logits [vocab]; row_max: its max scaled logit; lo, hi: int64 keys with every
    kept value inside [lo, hi) and nothing at or above hi counted yet (hi = key(row_max) + 1 at the
    start). stat is the mass when BY_MASS else the count. With no value kept (limit <= 0) the top
    value wins, as the reference's `clamp(min=0)` keeps the most likely token.
    """
    buckets = tl.arange(0, NUM_BUCKETS)  # [NUM_BUCKETS]
    stat_above = 0.0  # stat of keys >= hi
    mass_above = 0.0  # mass of keys >= hi
    mass_at_lo = 0.0  # mass of keys >= lo once the search has ended
    passes = 0
    done = tl.full([], 0, tl.int1)  # run at least one pass, which also measures the mass
    while (passes < MAX_SEARCH_PASSES) & (done == 0):
        inv_width = NUM_BUCKETS / (hi - lo).to(tl.float32)
        count = tl.zeros([NUM_BUCKETS], tl.float32)  # [NUM_BUCKETS]
        mass = tl.zeros([NUM_BUCKETS], tl.float32)  # [NUM_BUCKETS]
        key_min = tl.full([NUM_BUCKETS], INT32_MAX, tl.int32)  # [NUM_BUCKETS]
        key_max = tl.full([NUM_BUCKETS], INT32_MIN, tl.int32)  # [NUM_BUCKETS]
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)  # [BLOCK]
            s = scaled_logits(row_ptr, offs, vocab, temperature)  # [BLOCK]
            key = float_key(s)  # [BLOCK]
            inside = (key >= lo) & (key < hi) & (offs < vocab)
            # Any monotone bucket map works: the update below snaps to the data's own min/max keys.
            # (clamped before the cast: keys outside [lo, hi) would overflow int32, which is undefined)
            bucket = (key.to(tl.int64) - lo).to(tl.float32) * inv_width
            bucket = tl.minimum(tl.maximum(bucket, 0.0), NUM_BUCKETS - 1.0).to(tl.int32)
            in_bucket = (bucket[:, None] == buckets[None, :]) & inside[:, None]  # [BLOCK, NUM_BUCKETS]
            count += tl.sum(in_bucket.to(tl.float32), axis=0)
            mass += tl.sum(tl.where(in_bucket, tl.exp(s - row_max)[:, None], 0.0), axis=0)
            key_min = tl.minimum(key_min, tl.min(tl.where(in_bucket, key[:, None], INT32_MAX), axis=0))
            key_max = tl.maximum(key_max, tl.max(tl.where(in_bucket, key[:, None], INT32_MIN), axis=0))
        if BY_MASS:
            stat = mass
        else:
            stat = count
        stat_strictly_above = stat_above + (tl.sum(stat, axis=0) - tl.cumsum(stat, axis=0))  # [NUM_BUCKETS]
        mass_strictly_above = mass_above + (tl.sum(mass, axis=0) - tl.cumsum(mass, axis=0))  # [NUM_BUCKETS]
        nonempty = count > 0
        chosen = tl.min(tl.where(nonempty & (stat_strictly_above < limit), buckets, NUM_BUCKETS), axis=0)
        top_nonempty = tl.max(tl.where(nonempty, buckets, -1), axis=0)
        chosen = tl.where(chosen == NUM_BUCKETS, top_nonempty, chosen)
        is_chosen = buckets == chosen  # [NUM_BUCKETS]
        lo = tl.sum(tl.where(is_chosen, key_min, 0), axis=0).to(tl.int64)
        hi = tl.sum(tl.where(is_chosen, key_max, 0), axis=0).to(tl.int64) + 1
        stat_above = tl.sum(tl.where(is_chosen, stat_strictly_above, 0.0), axis=0)
        mass_above = tl.sum(tl.where(is_chosen, mass_strictly_above, 0.0), axis=0)
        mass_at_lo = mass_above + tl.sum(tl.where(is_chosen, mass, 0.0), axis=0)
        done = lo >= hi - 1
        passes += 1
    return lo.to(tl.int32), mass_at_lo


@triton.jit
def target_row_stats_kernel(
    target_logits_ptr,  # [num_draft_tokens + batch, vocab]
    cu_num_draft_ptr,  # [batch] int64, inclusive cumulative k_i
    temperature_ptr,  # [batch] float
    top_k_ptr,  # [batch] int64, 0 = off
    top_p_ptr,  # [batch] float, 1 = off
    is_greedy_ptr,  # [batch] bool
    row_argmax_ptr,  # [num_draft_tokens + batch] int64 out, greedy rows: argmax of the raw logits
    row_max_ptr,  # [num_draft_tokens + batch] fp32 out, sampled rows: max scaled logit
    row_inv_sum_ptr,  # [num_draft_tokens + batch] fp32 out, sampled rows: 1 / sum of exp over kept tokens
    row_threshold_ptr,  # [num_draft_tokens + batch] int32 out, sampled rows: kept iff float_key(s) >= this
    vocab,
    logits_row_stride,
    BLOCK: tl.constexpr,
    SEARCH_BLOCK: tl.constexpr,
):
    """One program per (request, position 0..max_spec_len); positions past k_i return at once.

    One read of the row, plus one read per search pass for each active filter.
    """
    req = tl.program_id(0)
    position = tl.program_id(1)  # 0..k_i: draft positions, then the bonus position
    start, num_draft = request_span(cu_num_draft_ptr, req)
    if position > num_draft:
        return
    row = start + req + position
    row_ptr = target_logits_ptr + row.to(tl.int64) * logits_row_stride
    if tl.load(is_greedy_ptr + req) != 0:
        best = -float("inf")
        best_index = 0
        for tile in range(0, vocab, BLOCK):
            offs = tile + tl.arange(0, BLOCK)  # [BLOCK]
            logits = tl.load(row_ptr + offs, mask=offs < vocab, other=-float("inf")).to(tl.float32)
            best, best_index = running_argmax(logits, tile, best, best_index)
        tl.store(row_argmax_ptr + row, best_index.to(tl.int64))
    else:
        temperature = row_temperature(temperature_ptr, req)
        row_max = -float("inf")
        sum_exp = 0.0
        row_min = float("inf")
        for tile in range(0, vocab, BLOCK):  # online softmax
            offs = tile + tl.arange(0, BLOCK)  # [BLOCK]
            scaled = scaled_logits(row_ptr, offs, vocab, temperature)  # [BLOCK]
            new_max = tl.maximum(row_max, tl.max(scaled, axis=0))
            sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(scaled - new_max), axis=0)
            row_max = new_max
            row_min = tl.minimum(row_min, tl.min(tl.where(offs < vocab, scaled, float("inf")), axis=0))
        # Keep everything (key >= key of the minimum) unless a top-k / top-p filter is on.
        threshold = float_key(row_min)
        top_key = float_key(row_max).to(tl.int64)
        top_k = tl.load(top_k_ptr + req)
        if (top_k > 0) & (top_k < vocab):
            threshold, sum_exp = threshold_search(
                row_ptr, vocab, temperature, row_max, threshold.to(tl.int64), top_key + 1,
                top_k.to(tl.float32), BY_MASS=False, BLOCK=SEARCH_BLOCK,
            )
        top_p = tl.load(top_p_ptr + req).to(tl.float32)
        if top_p < 1.0:  # as the reference: only rows with top_p < 1 (as fp32) are cut
            # Mass is compared unnormalised: mass_before / Z < top_p  <=>  mass_before < top_p * Z.
            threshold, sum_exp = threshold_search(
                row_ptr, vocab, temperature, row_max, threshold.to(tl.int64), top_key + 1,
                top_p * sum_exp, BY_MASS=True, BLOCK=SEARCH_BLOCK,
            )
        tl.store(row_max_ptr + row, row_max)
        tl.store(row_inv_sum_ptr + row, 1.0 / sum_exp)
        tl.store(row_threshold_ptr + row, threshold)
