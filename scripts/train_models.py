"""Train the bundled model pair (`models/tiny-target`, `models/tiny-draft`) from scratch.

Corpus: the Python standard library's own `.py` files (freely licensed, present on every machine),
leaving out site-packages, tests, encodings, lib2to3 and idlelib. Files are split into train and
held-out by a hash of their path, so the split is the same on every machine with the same Python.

    python scripts/train_models.py                    # tokenizer, target, draft (~20 min on 2 cores)
    python scripts/train_models.py --target-steps 50  # a quick smoke run

1. a byte-level BPE tokenizer (4096 entries; `<|endoftext|>` is BOS, EOS and PAD);
2. a Llama target (6 layers, hidden 256, 4 query / 2 key-value heads, tied embeddings);
3. a Llama draft (2 layers, hidden 128) distilled from the target (forward KL on corpus text), so
   that its proposals agree with the target as often as a real draft's do.

Training is resumable: state is checkpointed under `--work-dir` and picked up on the next run.
The script ends by measuring held-out acceptance and writes `models/TRAINING.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaspec.workload.prompts import corpus_split  # noqa: E402

SPECIAL = "<|endoftext|>"


def read_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A {SPECIAL} $B", special_tokens=[(SPECIAL, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, model_max_length=2048
    )
    fast.save_pretrained(out_dir)
    return fast


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    """One long stream: BOS text BOS text ... (BOS doubles as the document separator)."""
    ids: list[int] = []
    for batch_start in tqdm(range(0, len(texts), 256), desc="tokenize", unit="batch"):
        for row in tokenizer(texts[batch_start : batch_start + 256])["input_ids"]:
            ids.extend(row)
    return torch.tensor(ids, dtype=torch.int32)


def llama_config(vocab_size: int, bos_id: int, layers: int, hidden: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3 + 63) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=bos_id,
        dtype="bfloat16",
    )


def batches(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).long()
        yield window[:, :-1], window[:, 1:]


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    name: str,
    model,
    tokens: torch.Tensor,
    steps: int,
    args,
    teacher=None,
) -> None:
    """Next-token cross-entropy, or forward KL to `teacher` (distillation) when one is given."""
    ckpt = args.work_dir / f"{name}.pt"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(args.seed + len(name))
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
        start = state["step"]
    data = batches(tokens, args.batch_size, args.seq_len, generator)
    model.train()
    bar = tqdm(range(start, steps), desc=f"train {name}", initial=start, total=steps, unit="step")
    for step in bar:
        inputs, labels = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=inputs).logits.float()  # [batch, seq, vocab]
            if teacher is None:
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
            else:
                with torch.no_grad():
                    p_logits = teacher(input_ids=inputs).logits.float()  # [batch, seq, vocab]
                loss = F.kl_div(
                    F.log_softmax(logits, -1).flatten(0, 1),
                    F.log_softmax(p_logits, -1).flatten(0, 1),
                    log_target=True,
                    reduction="batchmean",
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "generator": generator.get_state(),
                 "step": step + 1},
                ckpt,
            )
    model.eval()


@torch.no_grad()
def held_out_metrics(target, draft, tokens: torch.Tensor, seq_len: int, windows: int = 64) -> dict:
    """Teacher-forced agreement on held-out text.

    greedy acceptance: P(argmax q == argmax p); sampled acceptance at temperature 1: E[sum min(p, q)],
    the probability that rejection sampling accepts a draft token.
    """
    generator = torch.Generator().manual_seed(1234)
    data = batches(tokens, windows, seq_len, generator)
    inputs, labels = next(data)
    p_logits = target(input_ids=inputs).logits.float()  # [windows, seq, vocab]
    q_logits = draft(input_ids=inputs).logits.float()  # [windows, seq, vocab]
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    return {
        "target_ce": F.cross_entropy(p_logits.flatten(0, 1), labels.flatten()).item(),
        "draft_ce": F.cross_entropy(q_logits.flatten(0, 1), labels.flatten()).item(),
        "greedy_acceptance": (p.argmax(-1) == q.argmax(-1)).float().mean().item(),
        "sampled_acceptance_t1": torch.minimum(p, q).sum(-1).mean().item(),
    }


def save_model(model, out_dir: Path, tokenizer) -> int:
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.float()
    return sum(f.stat().st_size for f in out_dir.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".train-work")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--target-steps", type=int, default=550)
    parser.add_argument("--draft-steps", type=int, default=300)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on some CPUs, not all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    target_dir, draft_dir = args.out / "tiny-target", args.out / "tiny-draft"
    began = time.time()

    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    train_files, held_out_files = corpus_split()
    train_texts, held_out_texts = read_texts(train_files), read_texts(held_out_files)
    print(f"corpus: {len(train_texts)} train files ({sum(map(len, train_texts)) / 1e6:.1f} MB), "
          f"{len(held_out_texts)} held-out files")
    tok_dir = args.work_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(train_texts, tok_dir, args.vocab_size)
    cache = args.work_dir / "tokens.pt"
    if cache.exists():
        train_tokens, held_out_tokens = torch.load(cache)
    else:
        train_tokens, held_out_tokens = encode_corpus(tokenizer, train_texts), encode_corpus(tokenizer, held_out_texts)
        torch.save((train_tokens, held_out_tokens), cache)
    chars_per_token = sum(map(len, train_texts)) / len(train_tokens)
    print(f"tokens: {len(train_tokens) / 1e6:.2f} M train, {len(held_out_tokens) / 1e3:.0f} k held-out, "
          f"{chars_per_token:.2f} chars/token")

    bos = tokenizer.bos_token_id
    vocab = len(tokenizer)
    target = LlamaForCausalLM(llama_config(vocab, bos, layers=6, hidden=256, heads=4, kv_heads=2)).float()
    t0 = time.time()
    train("target", target, train_tokens, args.target_steps, args)
    target_minutes = (time.time() - t0) / 60
    target_bytes = save_model(target, target_dir, tokenizer)

    for p in target.parameters():
        p.requires_grad_(False)
    draft = LlamaForCausalLM(llama_config(vocab, bos, layers=2, hidden=128, heads=4, kv_heads=2)).float()
    t0 = time.time()
    train("draft", draft, train_tokens, args.draft_steps, args, teacher=target)
    draft_minutes = (time.time() - t0) / 60
    draft_bytes = save_model(draft, draft_dir, tokenizer)

    metrics = held_out_metrics(target, draft, held_out_tokens, args.seq_len)
    report = {
        "command": "python scripts/train_models.py "
        + f"--target-steps {args.target_steps} --draft-steps {args.draft_steps}",
        "corpus": {"train_files": len(train_texts), "held_out_files": len(held_out_texts),
                   "train_tokens": len(train_tokens), "held_out_tokens": len(held_out_tokens),
                   "chars_per_token": round(chars_per_token, 3)},
        "target": {"params": sum(p.numel() for p in target.parameters()), "bytes": target_bytes,
                   "train_minutes": round(target_minutes, 1)},
        "draft": {"params": sum(p.numel() for p in draft.parameters()), "bytes": draft_bytes,
                  "train_minutes": round(draft_minutes, 1)},
        "held_out": {k: round(v, 4) for k, v in metrics.items()},
        "total_minutes": round((time.time() - began) / 60, 1),
        "held_out_files": [str(p.relative_to(sysconfig.get_paths()["stdlib"])) for p in held_out_files],
    }
    (args.out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "held_out_files"}, indent=2))


if __name__ == "__main__":
    main()
