"""The Triton kernels against their PyTorch references, run on the CPU by the Triton interpreter.

With ADASPEC_TEST_DEVICE=cuda the kernels run compiled on the GPU instead (`benchmarks/gpu_check.sh`): the inputs
are built on the CPU as always and copied to the GPU where a kernel is called, and its outputs copied back, so
the references and every check are the same in both modes: `ADASPEC_TEST_DEVICE=cuda pytest
tests/test_kernels_triton.py` (a plain run of the suite still runs them in the interpreter only, as below).

`triton.jit` picks the interpreter when a function is decorated, so TRITON_INTERPRET=1 must be set
before `triton` itself is first imported — Triton's own `tl.max` & co. are jit functions too. In a
plain pytest run the shared conftest has already imported triton (transformers pulls in torch's
Triton helpers), so it does not collect this module (conftest.py): `test_kernels_interpreter.py` runs it in a
subprocess with TRITON_INTERPRET=1. Other test files are unaffected: `kernels` imports its Triton modules lazily
and the CPU path never touches them. `TRITON_INTERPRET=1 pytest tests/test_kernels_triton.py` runs the tests
directly.

The interpreter executes every program of a grid in Python (~10 ms per small program), which bounds
the batch sizes here; the vocabulary size costs little.
"""

from __future__ import annotations

import os
import sys

DEVICE = os.environ.get("ADASPEC_TEST_DEVICE", "cpu")  # where the kernels run: "cpu" (interpreted) or "cuda"
if DEVICE == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

triton = pytest.importorskip("triton", exc_type=ImportError)  # also a broken install: skip, not fail

import triton.language as tl
from adaspec.kernels import (
    PLACEHOLDER_TOKEN_ID,
    paged_attention_ref,
    paged_attention_triton,
    rejection_sampler_ref,
    rejection_sampler_triton,
)
from adaspec.kernels.rng import uniform
from adaspec.kernels.rng_triton import seed_key, uniform_from_key
from adaspec.kernels.sampling import processed_probs
from adaspec.kernels.sampling_triton import target_row_stats_kernel
from triton.runtime.interpreter import InterpretedFunction

from adaspec import kernels
from tests.test_rejection_sampler import TIED_LOGITS, first_token_pvalue, zero_residual_case

if DEVICE == "cpu" and not isinstance(tl.max, InterpretedFunction):  # named on a plain pytest run's command line
    pytest.fail("triton was imported before this module without TRITON_INTERPRET=1: run `TRITON_INTERPRET=1 pytest "
                "tests/test_kernels_triton.py`, or tests/test_kernels_interpreter.py", pytrace=False)
if DEVICE != "cpu" and not torch.cuda.is_available():  # asked for a GPU: a run without one must not pass
    pytest.fail(f"ADASPEC_TEST_DEVICE={DEVICE} but torch sees no CUDA device", pytrace=False)


SEED_MAX = 2**63 - 1  # seeds are in [0, 2**63); torch.randint takes an exclusive int64 bound


def make_inputs(batch: int, vocab: int, max_k: int, topk: int, seed: int, *, greedy_fraction: float = 0.3,
                temperature=None, top_k=None, top_p=None, num_draft=None, is_greedy=None,
                draft_noise: float = 1.0) -> dict:
    """Fresh random inputs. The draft scores each position like the target plus noise, so acceptance
    is partial; sampling parameters are mixed per request unless given (a value, or a list per request)."""
    g = torch.Generator().manual_seed(seed)
    num_draft = torch.randint(0, max_k + 1, (batch,), generator=g) if num_draft is None else torch.tensor(num_draft)
    num_draft_tokens = int(num_draft.sum())
    target_logits = torch.randn(num_draft_tokens + batch, vocab, generator=g) * 3  # [rows, vocab]

    def per_request(value, choices):
        if isinstance(value, list):
            return torch.tensor(value)
        if value is not None:
            return torch.full((batch,), value)
        return torch.tensor(choices)[torch.randint(0, len(choices), (batch,), generator=g)]

    temperature = per_request(temperature, [0.5, 1.0, 1.0, 1.7]).float()
    top_k = per_request(top_k, [0, 0, 1, 5, 50]).long()
    top_p = per_request(top_p, [1.0, 1.0, 0.9, 0.5]).float()
    is_greedy = torch.rand(batch, generator=g) < greedy_fraction if is_greedy is None else torch.tensor(is_greedy)
    req = torch.repeat_interleave(torch.arange(batch), num_draft)  # [num_draft_tokens]
    draft_rows = torch.arange(num_draft_tokens) + req  # [num_draft_tokens]
    draft_logits = target_logits[draft_rows] + draft_noise * torch.randn(num_draft_tokens, vocab, generator=g)
    q = processed_probs(draft_logits, temperature[req], top_k[req], top_p[req])  # [num_draft_tokens, vocab]
    topk_probs, topk_ids = q.topk(topk, dim=-1)  # [num_draft_tokens, K]
    topk_probs = topk_probs / topk_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(topk_probs, 1, generator=g)[:, 0] if num_draft_tokens else torch.zeros(0).long()
    greedy_draft = is_greedy[req]
    choice = torch.where(greedy_draft, torch.zeros_like(choice), choice)
    topk_probs[greedy_draft] = torch.nn.functional.one_hot(torch.zeros_like(choice), topk)[greedy_draft].float()
    return {
        "target_logits": target_logits, "draft_token_ids": topk_ids.gather(1, choice[:, None])[:, 0],
        "draft_topk_ids": topk_ids, "draft_topk_probs": topk_probs, "cu_num_draft_tokens": num_draft.cumsum(0),
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "is_greedy": is_greedy,
        "seeds": torch.randint(0, SEED_MAX, (batch,), generator=g), "max_spec_len": max(max_k, int(num_draft.max())),
    }


def on_device(value):
    """A tensor, or a dict or tuple of tensors and plain values, with its tensors on DEVICE (strides kept)."""
    if torch.is_tensor(value):
        return value.to(DEVICE)
    if isinstance(value, dict):
        return {key: on_device(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(on_device(item) for item in value)
    return value


def triton_sample(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton sampler on DEVICE; (num_accepted, output) back on the CPU."""
    num_accepted, output = rejection_sampler_triton.rejection_sample(**on_device(inputs))
    return num_accepted.cpu(), output.cpu()


def assert_same_as_reference(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    expected_accepted, expected_output = rejection_sampler_ref.rejection_sample(**inputs)
    num_accepted, output = triton_sample(inputs)
    assert num_accepted.tolist() == expected_accepted.tolist()
    assert output.tolist() == expected_output.tolist()
    return num_accepted, output


@triton.jit
def _uniform_kernel(seeds_ptr, counters_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    u = uniform_from_key(seed_key(tl.load(seeds_ptr + offs)), tl.load(counters_ptr + offs))
    tl.store(out_ptr + offs, u)


def test_triton_rng_matches_reference_bits():
    g = torch.Generator().manual_seed(0)
    edge_seeds = torch.tensor([0, 1, 2**32 - 1, 2**32, SEED_MAX - 1, SEED_MAX])
    seeds = torch.cat([edge_seeds, torch.randint(0, SEED_MAX, (250,), generator=g)])
    counters = torch.cat([torch.tensor([0, 1, 63, 64, 2**32 - 1]), torch.randint(0, 2**32, (251,), generator=g)])
    out = torch.empty(256, device=DEVICE)
    _uniform_kernel[(1,)](*on_device((seeds, counters)), out, N=256)
    assert torch.equal(out.cpu(), uniform(seeds, counters))


@pytest.mark.parametrize(
    "batch, vocab, max_k, topk, filters, seed",
    [(1, 1000, 0, 8, True, 0), (1, 1000, 8, 8, True, 1), (7, 1000, 8, 8, True, 2), (12, 4099, 5, 32, True, 4),
     (2, 32000, 3, 32, True, 5),
     (64, 1024, 8, 32, False, 3)],  # (top-k / top-p searches cost the interpreter much; covered above)
)
def test_sampler_matches_reference(batch, vocab, max_k, topk, filters, seed):
    no_filters = {} if filters else {"top_k": 0, "top_p": 1.0}
    inputs = make_inputs(batch, vocab, max_k, topk, seed, **no_filters)
    num_accepted, output = assert_same_as_reference(inputs)
    num_draft = torch.diff(inputs["cu_num_draft_tokens"], prepend=torch.zeros(1, dtype=torch.long))
    emitted = (output != PLACEHOLDER_TOKEN_ID).sum(dim=1)
    assert emitted.tolist() == (num_accepted + 1).tolist() and (num_accepted <= num_draft).all()
    if batch >= 12:  # the shape is rich enough to cover full acceptance, rejection and k = 0
        assert ((num_accepted == num_draft) & (num_draft > 0)).any() and (num_accepted < num_draft).any()
        assert (num_draft == 0).any()


@pytest.mark.slow
def test_sampler_matches_reference_at_full_vocabulary():
    """Qwen2's padded vocabulary: greedy, plain sampled, top-k 50 + top-p 0.9, and top-p 0.9 requests."""
    inputs = make_inputs(4, 152_064, 2, 32, seed=6, is_greedy=[True, False, False, False], top_k=[0, 0, 50, 0],
                         top_p=[1.0, 1.0, 0.9, 0.9])
    assert_same_as_reference(inputs)


def test_rows_without_drafts_emit_only_a_bonus_token():
    for max_k in (0, 4):
        inputs = make_inputs(6, 500, max_k, 8, seed=10 + max_k, num_draft=[0] * 6)
        inputs["max_spec_len"] = max_k
        num_accepted, output = assert_same_as_reference(inputs)
        assert num_accepted.tolist() == [0] * 6 and (output[:, 0] >= 0).all() and (output[:, 1:] == -1).all()


def test_draft_equal_to_target_is_all_accepted():
    """q == p (K = vocab): every draft passes u * q <= p and each request ends with a bonus token."""
    batch, vocab, k = 8, 64, 4
    inputs = make_inputs(batch, vocab, k, vocab, seed=20, greedy_fraction=0.0, num_draft=[k] * batch,
                         temperature=1.0, top_k=0, top_p=1.0)
    rows = torch.arange(batch * (k + 1)).view(batch, k + 1)[:, :k].flatten()
    p = processed_probs(inputs["target_logits"][rows], torch.ones(len(rows)), torch.zeros(len(rows)).long(),
                        torch.ones(len(rows)))
    inputs["draft_topk_probs"], inputs["draft_topk_ids"] = p.topk(vocab)
    inputs["draft_token_ids"] = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    num_accepted, output = assert_same_as_reference(inputs)
    assert num_accepted.tolist() == [k] * batch and (output[:, k] >= 0).all()


def test_first_draft_rejected():
    """p(x) = 0 for every first draft token (its logit is -inf): sampled rows reject at position 0 and
    greedy rows, whose draft is not the argmax, too."""
    inputs = make_inputs(12, 300, 3, 8, seed=30, greedy_fraction=0.5, num_draft=[3] * 12)
    first_rows = torch.arange(12) * 4
    inputs["target_logits"][first_rows, inputs["draft_token_ids"][first_rows - torch.arange(12)]] = -float("inf")
    num_accepted, output = assert_same_as_reference(inputs)
    assert num_accepted.tolist() == [0] * 12 and (output[:, 0] >= 0).all() and (output[:, 1:] == -1).all()


@pytest.mark.parametrize("params", [{"top_k": 1, "top_p": 1.0, "temperature": 1.0},
                                    {"top_k": 0, "top_p": 1.0, "temperature": 1e-4}])
def test_top_k_one_and_near_zero_temperature_act_greedily(params):
    inputs = make_inputs(6, 777, 3, 8, seed=40, greedy_fraction=0.0, num_draft=[3] * 6, **params)
    num_accepted, output = assert_same_as_reference(inputs)
    argmax = inputs["target_logits"].argmax(dim=-1).view(6, 4)
    for b in range(6):
        n = int(num_accepted[b])
        assert output[b, : n + 1].tolist() == argmax[b, : n + 1].tolist()


def test_mixed_greedy_and_sampled_rows():
    inputs = make_inputs(24, 2048, 6, 16, seed=50, greedy_fraction=0.5)
    assert inputs["is_greedy"].any() and not inputs["is_greedy"].all()
    assert_same_as_reference(inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(dtype):
    """16-bit logits (ties in the argmax are likely: the first maximum wins, as in torch.argmax) and
    float64 sampling parameters, converted to fp32 as the reference does."""
    inputs = make_inputs(16, 1000, 4, 8, seed=70, greedy_fraction=0.5)
    inputs["target_logits"] = inputs["target_logits"].to(dtype)
    inputs["temperature"], inputs["top_p"] = inputs["temperature"].double(), inputs["top_p"].double()
    assert_same_as_reference(inputs)


def triton_probs(logits, temperature, top_k, top_p) -> torch.Tensor:
    """p of each row as the Triton sampler sees it: `target_row_stats_kernel`'s stats, expanded in PyTorch."""
    rows = logits.shape[0]
    stats = [torch.empty(rows, dtype=dtype, device=DEVICE)
             for dtype in (torch.long, torch.float32, torch.float32, torch.int32)]
    target_row_stats_kernel[(rows, 1)](
        *on_device((logits, torch.zeros(rows, dtype=torch.long), temperature, top_k, top_p,
                    torch.zeros(rows, dtype=torch.bool))),
        *stats, logits.shape[1], logits.stride(0),
        BLOCK=rejection_sampler_triton.STATS_BLOCK, SEARCH_BLOCK=rejection_sampler_triton.SEARCH_BLOCK,
    )  # each row its own request with k = 0
    _, row_max, row_inv_sum, row_threshold = (stat.cpu() for stat in stats)
    scaled = logits.float() / torch.where(temperature > 0, temperature, 1.0)[:, None]  # [rows, vocab]
    bits = scaled.view(torch.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # sampling_triton.float_key
    kept = key >= row_threshold[:, None]
    return torch.where(kept, torch.exp(scaled - row_max[:, None]) * row_inv_sum[:, None], 0.0)


def test_triton_keeps_the_same_tokens_as_processed_probs():
    """The same top-k / top-p rule (kernels.sampling): ties with the k-th logit all kept, top-p off
    for top_p = 1 rows however deep their fp32 tail; the kept sets agree exactly, p to fp32 rounding."""
    g = torch.Generator().manual_seed(80)
    vocab = 9000
    assert vocab > rejection_sampler_triton.STATS_BLOCK, "the row statistics must span several tiles"
    tied = torch.full((5, vocab), -30.0)
    tied[:, : len(TIED_LOGITS)] = torch.tensor(TIED_LOGITS)
    settings = [(3, 1.0), (1, 1.0), (3, 0.8), (3, 0.95), (0, 0.0)]  # as test_ties_at_the_kth_logit_are_all_kept
    integer_valued = (torch.randn(8, vocab, generator=g) * 3).round()  # many ties at every threshold
    integer_settings = [(5, 1.0), (50, 1.0), (1, 0.9), (5, 0.5), (50, 0.9), (0, 0.9), (0, 0.5), (2000, 0.99)]
    logits = torch.cat([tied, integer_valued, torch.linspace(0.0, -40.0, vocab)[None]])  # + a deep fp32 tail
    top_k = torch.tensor([k for k, _ in settings + integer_settings] + [0])
    top_p = torch.tensor([p for _, p in settings + integer_settings] + [1.0])
    temperature = torch.tensor([1.0] * 5 + [0.7, 1.0, 1.3, 1.0, 0.5, 1.0, 2.0, 1.0] + [1.0])
    expected = processed_probs(logits, temperature, top_k, top_p)
    probs = triton_probs(logits, temperature, top_k, top_p)
    assert torch.equal(probs > 0, expected > 0)
    torch.testing.assert_close(probs, expected, rtol=2e-6, atol=1e-12)
    assert torch.equal(expected[0, :7] > 0, torch.tensor([True, True, True, False, True, True, False]))
    assert (expected[-1] > 0).all()


def test_sampler_matches_reference_with_tied_logits():
    """Integer-valued target logits: ties at the top-k and top-p thresholds and in the greedy argmax."""
    inputs = make_inputs(12, 1000, 4, 16, seed=90, top_k=[1, 5, 50, 0] * 3, top_p=[1.0, 0.9, 0.5] * 4)
    inputs["target_logits"] = inputs["target_logits"].round()
    assert_same_as_reference(inputs)


@pytest.mark.parametrize("vocab, support", [(50, [7, 3, 42, 19]), (8192, [7000, 3, 4100, 2100, 19])])
def test_recovered_token_falls_back_to_p_when_rounding_leaves_no_residual(vocab, support):
    """As the reference's test; at vocabulary 8192 the race is split (4 requests, 2 splits each)."""
    inputs, expected = zero_residual_case(vocab, support, batch=4)
    num_accepted, output = assert_same_as_reference(inputs)
    assert num_accepted.tolist() == [0] * 4 and output[:, 0].tolist() == expected.tolist()


def distribution_inputs(rows: int, vocab: int, seed: int):
    """One target row (p) and one draft distribution (q) per request, k = 1, x ~ q."""
    g = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(vocab, generator=g) * 1.5
    q = (p_logits + torch.randn(vocab, generator=g) * 2.0).softmax(-1)
    topk_probs, topk_ids = q[None].expand(rows, vocab).topk(vocab)
    inputs = {
        "target_logits": p_logits[None].expand(2 * rows, vocab).contiguous(),  # draft row and bonus row alike
        "draft_token_ids": torch.multinomial(q, rows, replacement=True, generator=g),
        "draft_topk_ids": topk_ids, "draft_topk_probs": topk_probs,
        "cu_num_draft_tokens": torch.arange(1, rows + 1), "temperature": torch.ones(rows),
        "top_k": torch.zeros(rows, dtype=torch.long), "top_p": torch.ones(rows),
        "is_greedy": torch.zeros(rows, dtype=torch.bool),
        "seeds": torch.randint(0, SEED_MAX, (rows,), generator=g), "max_spec_len": 1,
    }
    return p_logits.softmax(-1), q, inputs


def test_triton_emitted_token_is_distributed_as_p():
    """Chi-square of the first emitted token (accepted draft or recovered) against p, through Triton.

    The same samples are also tested against the distributions two classic bugs would produce, to show
    the test can tell them apart from p: accepting every draft (the output follows q) and drawing the
    recovered token from p instead of max(0, p - q) (min(p, q) + (1 - sum min(p, q)) p).
    """
    p, q, inputs = distribution_inputs(rows=200, vocab=8, seed=9)
    assert (p - q).abs().sum() > 0.5, "the test needs a draft that differs from the target"
    num_accepted, output = triton_sample(inputs)
    assert 0.2 < num_accepted.float().mean() < 0.8, "both accepted and recovered tokens must occur"
    assert first_token_pvalue(p, output[:, 0]) > 1e-3
    overlap = torch.minimum(p, q)
    assert first_token_pvalue(q, output[:, 0]) < 1e-6
    assert first_token_pvalue(overlap + (1 - overlap.sum()) * p, output[:, 0]) < 1e-6


def make_attention_inputs(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size, seed,
                          dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    batch = len(seq_lens)
    max_blocks = max(triton.cdiv(s, block_size) for s in seq_lens) + 1
    num_blocks = batch * max_blocks + 5
    block_tables = torch.randperm(num_blocks, generator=g)[: batch * max_blocks].view(batch, max_blocks).int()
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    # [num_tokens, num_heads, head_dim], non-contiguous like the engine's query[0].transpose(0, 1)
    query = torch.randn(num_heads, sum(query_lens), head_dim, generator=g).to(dtype).transpose(0, 1)
    cu_query_lens = torch.tensor([0, *query_lens]).cumsum(0).int()
    return (query, key_cache, value_cache, block_tables, cu_query_lens, torch.tensor(seq_lens).int(),
            head_dim**-0.5, max(query_lens), max(seq_lens))


@pytest.mark.parametrize(
    "query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size",
    [
        ([1, 4, 9], [16, 15, 17], 4, 2, 16, 16),  # seq lens at a block boundary and +-1; GQA 2
        ([3, 9, 1, 2], [32, 33, 31, 2], 8, 1, 40, 16),  # multi-query, head_dim not a power of two
        ([5, 1], [5, 100], 6, 6, 32, 8),  # a pure prefill (q == seq) and plain multi-head attention
        ([70, 9], [70, 139], 4, 2, 64, 16),  # more query tokens than one program's tile
        ([2, 3], [48, 64], 12, 4, 16, 32),  # GQA 3: the group is padded to 4 rows
    ],
)
def test_paged_attention_matches_reference(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size):
    args = make_attention_inputs(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size, seed=0)
    expected = paged_attention_ref.paged_attention(*args)
    out = paged_attention_triton.paged_attention(*on_device(args)).cpu()
    assert out.shape == expected.shape
    assert (out - expected).abs().max() < 2e-5


def test_paged_attention_over_a_padded_batch():
    """A CUDA graph's padded batch (`adaspec.engine.cuda_graphs`): sequences that hold no token and query rows past
    the last sequence get no work, a larger max_query_len than the batch needs changes nothing, and the real rows
    are the unpadded batch's."""
    args = make_attention_inputs([1, 4, 2], [16, 15, 9], 4, 2, 16, 16, seed=5)
    query, key_cache, value_cache, block_tables, cu_query_lens, seq_lens, scale, _, _ = args
    expected = paged_attention_ref.paged_attention(*args)
    pad_rows, pad_seqs, g = 5, 2, torch.Generator().manual_seed(6)
    padded = (torch.cat([query, torch.randn(pad_rows, *query.shape[1:], generator=g)]), key_cache, value_cache,
              torch.cat([block_tables, torch.zeros(pad_seqs, block_tables.shape[1], dtype=block_tables.dtype)]),
              torch.cat([cu_query_lens, cu_query_lens[-1:].expand(pad_seqs)]),
              torch.cat([seq_lens, torch.zeros(pad_seqs, dtype=seq_lens.dtype)]),
              scale, 5, block_tables.shape[1] * 16)
    out = paged_attention_triton.paged_attention(*on_device(padded)).cpu()
    assert out.shape == padded[0].shape
    assert (out[: query.shape[0]] - expected).abs().max() < 2e-5


def test_paged_attention_half_precision():
    args = make_attention_inputs([4, 1], [20, 33], 4, 2, 32, 16, seed=1, dtype=torch.float16)
    expected = paged_attention_ref.paged_attention(*[a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                                                     for a in args])
    out = paged_attention_triton.paged_attention(*on_device(args)).cpu()
    assert out.dtype == torch.float16 and (out.float() - expected).abs().max() < 5e-3


def test_dispatch(monkeypatch):
    """CPU tensors use the references; ADASPEC_FORCE_TRITON=1 routes them to the Triton kernels (interpreted), and
    so do CUDA tensors without it (on a GPU, where the forced CPU path cannot run compiled)."""
    inputs = make_inputs(3, 200, 2, 4, seed=60)
    attention_args = make_attention_inputs([2, 1], [5, 3], 2, 1, 16, 4, seed=2)
    calls = []
    for module in (rejection_sampler_ref, rejection_sampler_triton, paged_attention_ref, paged_attention_triton):
        name = "rejection_sample" if "rejection" in module.__name__ else "paged_attention"
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _m=module, **kw: calls.append(_m) or _f(*a, **kw))
    monkeypatch.delenv(kernels.FORCE_TRITON_ENV, raising=False)
    kernels.rejection_sample(**inputs)
    kernels.paged_attention(*attention_args)
    assert calls == [rejection_sampler_ref, paged_attention_ref]
    if DEVICE == "cpu":
        monkeypatch.setenv(kernels.FORCE_TRITON_ENV, "1")
    kernels.rejection_sample(**on_device(inputs))
    kernels.paged_attention(*on_device(attention_args))
    assert calls[2:] == [rejection_sampler_triton, paged_attention_triton]

