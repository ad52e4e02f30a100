"""Hugging Face's MarianMT trained with a plain PyTorch loop: the peer bench_training_peers.py
runs in the Hugging Face environment (.venv-peers/hf), on the data and sentencepiece model
nmtkit prepared, with the shape and the recipe of configs/multi30k-transformer.yaml.

    .venv-peers/hf/bin/python benchmarks/peers/marian_train.py --spm data-bin/X/spm.model \
        --data ../shared/data/multi30k --minutes 30 --out runs/peers/marian

The loop does what nmtkit's trainer does per update: batches of at most --max-tokens padded
tokens from length-sorted, shuffled examples, label-smoothed cross-entropy over the target
tokens, AdamW with the inverse-square-root schedule after a linear warm-up, gradient clipping.
Writes log.jsonl (target tokens/s every --log-every updates), then decodes test2016 with beam 5
(`generate`) and writes test.hyp and result.json (BLEU, chrF, updates, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time
from pathlib import Path

import sacrebleu
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import MarianConfig, MarianMTModel

PAD, EOS = 0, 3  # nmtkit's sentencepiece ids: <pad> 0, <unk> 1, <s> 2, </s> 3


def encode(sp: spm.SentencePieceProcessor, path: Path) -> list[list[int]]:
    return [sp.encode(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batches(pairs: list[tuple[list[int], list[int]]], max_tokens: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(pairs)), key=lambda i: (max(len(pairs[i][0]), len(pairs[i][1])), rng.random()))
    out, current, longest = [], [], 0
    for i in order:
        cost = max(len(pairs[i][0]), len(pairs[i][1])) + 1
        if current and (len(current) + 1) * max(longest, cost) > max_tokens:
            out.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, cost)
    out.append(current)
    rng.shuffle(out)
    return out


def pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spm", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.0015)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--max-len", type=int, default=80)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: forward pass and loss under torch.autocast, as nmtkit's bf16")
    p.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa",
                   help="Hugging Face's attention implementation: sdpa (its default) or eager")
    p.add_argument("--no-test", action="store_true", help="train only (speed and memory)")
    p.add_argument("--log-every", type=int, default=50, help="updates per log.jsonl row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    rng = random.Random(1)
    args.out.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(args.spm))
    vocab = sp.get_piece_size()
    src, tgt = encode(sp, args.data / "train.en"), encode(sp, args.data / "train.de")
    pairs = [(s + [EOS], t + [EOS]) for s, t in zip(src, tgt, strict=True)
             if 0 < len(s) <= args.max_len and 0 < len(t) <= args.max_len]
    config = MarianConfig(
        vocab_size=vocab, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, activation_function="relu",
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=256,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS,
        attn_implementation=args.attention)
    model = MarianMTModel(config)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / args.warmup, math.sqrt(args.warmup / (s + 1))))
    log = (args.out / "log.jsonl").open("w")
    start, step, window_tokens, window_start = time.monotonic(), 0, 0, time.monotonic()
    done = False
    while not done:
        for idx in batches(pairs, args.max_tokens, rng):
            source = pad([pairs[i][0] for i in idx])
            target = pad([pairs[i][1] for i in idx])
            decoder_input = torch.cat([torch.full((len(idx), 1), PAD), target[:, :-1]], dim=1)
            model.train()
            with autocast:
                logits = model(input_ids=source, attention_mask=source != PAD,
                               decoder_input_ids=decoder_input).logits
                loss = F.cross_entropy(logits.view(-1, vocab), target.view(-1), ignore_index=PAD,
                                       label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            window_tokens += int((target != PAD).sum())
            if step % args.log_every == 0:
                now = time.monotonic()
                log.write(json.dumps({"step": step, "loss": loss.item(), "elapsed_s": now - start,
                                      "tokens_per_s": window_tokens / (now - window_start)}) + "\n")
                log.flush()
                window_tokens, window_start = 0, now
            if time.monotonic() - start > args.minutes * 60:
                done = True
                break
    train_seconds = time.monotonic() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB, as wait4's
    if args.no_test:
        result = {"updates": step, "train_seconds": train_seconds, "peak_rss_gb": peak_rss_gb}
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    model.eval()
    sources = (args.data / "test2016.en").read_text(encoding="utf-8").splitlines()
    refs = (args.data / "test2016.de").read_text(encoding="utf-8").splitlines()
    hyps = []
    with torch.no_grad(), autocast:
        for i in range(0, len(sources), 64):
            ids = [sp.encode(s)[: args.max_len] + [EOS] for s in sources[i : i + 64]]
            batch = pad(ids)
            out = model.generate(input_ids=batch, attention_mask=batch != PAD, num_beams=5,
                                 max_new_tokens=int(1.5 * batch.size(1)) + 10)
            hyps += [sp.decode([t for t in row.tolist() if t > EOS]) for row in out]
    (args.out / "test.hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    result = {"updates": step, "train_seconds": train_seconds,
              "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
              "bleu_lowercase": sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score,
              "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
              "peak_rss_gb": peak_rss_gb}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
