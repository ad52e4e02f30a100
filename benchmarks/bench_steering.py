"""Steerable decoding: forced scoring against teacher-forced training, and the latency of one
alternatives call.

- `Translator.score` on the source and reference of a test set (sentences/s, target tokens/s),
  against a training update on the same pairs, in the same batches (forward and backward, as the
  trainer runs it): scoring should be no slower per token than training.
- `Translator.alternatives(source, prefix, k=5)` at batch 1: the median time of a call with the
  prefix that is the first half (in words) of the model's own translation.

    python benchmarks/bench_steering.py --checkpoint runs/multi30k-transformer \
        --src ../shared/data/multi30k/test2016.en --ref ../shared/data/multi30k/test2016.de

Prints a markdown table. The checkpoint is any checkpoint or run folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nmtkit from this checkout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--alternatives", type=int, default=30, help="calls to time")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from nmtkit.cpu import machine_header

    print(machine_header())

    import torch

    from nmtkit.checkpoint import resolve_checkpoint
    from nmtkit.data import TokenBatchSampler, collate, read_parallel
    from nmtkit.translator import Translator

    torch.set_num_threads(args.threads)
    src, ref = read_parallel(Path(args.src), Path(args.ref))
    translator = Translator.load(resolve_checkpoint(args.checkpoint))
    tokens = sum(len(translator.tgt_tok.encode(r)) + 1 for r in ref)

    def best_of(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    score_s = best_of(lambda: translator.score(src, ref, batch_tokens=args.batch_tokens))

    # a training update's forward and backward on the same batches (the weights are not changed)
    model = translator.members[0]
    model.train()
    src_ids = [translator.src_tok.encode(s) for s in src]
    tgt_ids = [translator.tgt_tok.encode(r) for r in ref]
    cost = [max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids, strict=True)]
    batches = [collate([(src_ids[i], tgt_ids[i]) for i in b], b)
               for b in TokenBatchSampler(cost, cost, args.batch_tokens, shuffle=False, seed=0)]

    def train_pass() -> None:
        for batch in batches:
            loss, _ = model(batch.src, batch.src_lengths, batch.tgt_in, target=batch.tgt_out, smoothing=0.1)
            loss.backward()
        model.zero_grad(set_to_none=True)

    with torch.enable_grad():
        train_s = best_of(train_pass)
    model.eval()

    hyps = translator.translate(src[: args.alternatives], beam=5)
    prefixes = [" ".join(h.split()[: len(h.split()) // 2]) + " " if len(h.split()) > 1 else ""
                for h in hyps]
    translator.alternatives(src[0], prefixes[0], k=5)  # warm-up
    latencies = []
    for s, prefix in zip(src[: args.alternatives], prefixes, strict=True):
        start = time.perf_counter()
        translator.alternatives(s, prefix, k=5, beam=5)
        latencies.append(1000 * (time.perf_counter() - start))

    n = len(src)
    print(f"{translator.ckpt.path}; {n} sentences, {tokens} target tokens; {args.threads} threads; "
          f"best of {args.repeats}")
    print()
    print("| pass | sentences/s | target tokens/s | vs training |")
    print("|---|---:|---:|---:|")
    print(f"| training forward + backward | {n / train_s:.1f} | {tokens / train_s:,.0f} | 1.00x |")
    print(f"| `Translator.score` | {n / score_s:.1f} | {tokens / score_s:,.0f} | {train_s / score_s:.2f}x |")
    print()
    print(f"`Translator.alternatives(k=5, beam=5)` at batch 1, prefix = the first half of the "
          f"translation, {len(latencies)} calls: median {statistics.median(latencies):.0f} ms, "
          f"slowest {max(latencies):.0f} ms")


if __name__ == "__main__":
    main()
