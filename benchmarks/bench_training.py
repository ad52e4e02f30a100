"""Training throughput, peak memory and model FLOP utilisation for the shipped Multi30k configs.

Each (config, precision) runs in its own process (so its peak RSS is its own) on real batches
of the prepared Multi30k data: a few warm-up updates, then timed updates. FLOPs per update are
counted by PyTorch's FlopCounterMode (forward + backward); utilisation is against the FLOP/s of a
large fp32 matmul measured in the same run.

    python benchmarks/bench_training.py [--updates 12] [--threads 2]

Needs ../shared/data/multi30k (prepared on first use, as `nmtkit prepare` does).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {"rnn": "configs/multi30k-rnn.yaml", "transformer": "configs/multi30k-transformer.yaml",
           "transformer-tiny": "configs/multi30k-transformer-tiny.yaml"}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def measure(model_name: str, precision: str, loss_mode: str, updates: int, threads: int) -> dict:
    """loss_mode: "chunked", the output layer and the loss together in chunks, as training runs
    them (loss.output_layer_loss), or "whole": all the scores at once, then the loss."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nmtkit.config import load_config
    from nmtkit.cpu import keep_freed_memory
    from nmtkit.data import TokenBatchSampler, collate, prepare
    from nmtkit.loss import label_smoothed_nll
    from nmtkit.model import build_model, count_parameters

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    keep_freed_memory()  # as the trainer does
    cfg = load_config(CONFIGS[model_name])
    data = prepare(cfg.data, cfg.vocab, log=lambda _: None)
    corpus = data.split("train")
    model = build_model(cfg.model, len(data.src_tokenizer), len(data.tgt_tokenizer))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, cfg.training.max_tokens,
                                shuffle=True, seed=0)
    batches = [collate([corpus[i] for i in idx], idx) for idx in list(sampler)[: updates + 3]]

    def update(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if loss_mode == "chunked":
                loss, _ = model(batch.src, batch.src_lengths, batch.tgt_in, target=batch.tgt_out,
                                smoothing=0.1)
            else:
                hidden = model.decoder(batch.tgt_in, model.encode(batch.src, batch.src_lengths))
                loss, _ = label_smoothed_nll(model.generator(hidden), batch.tgt_out, 0.1)
        (loss / batch.n_tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in batches[:2]:  # warm-up
        update(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        update(batches[2])
    flops_per_token = counter.get_total_flops() / batches[2].n_tgt_tokens
    timed = batches[3:]
    start = time.perf_counter()
    for batch in timed:
        update(batch)
    seconds = time.perf_counter() - start
    tokens = sum(b.n_tgt_tokens for b in timed)
    return {
        "model": model_name, "precision": precision, "loss": loss_mode, "params": count_parameters(model),
        "tokens_per_s": tokens / seconds, "flops_per_token": flops_per_token,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--loss", nargs="+", choices=["chunked", "whole"], default=["chunked", "whole"],
                   help="output layer and loss in chunks (as training does) or all scores at once")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "PRECISION", "LOSS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.one:  # a worker's stdout is the protocol
        from nmtkit.cpu import machine_header

        print(machine_header())
    if args.one:
        print(json.dumps(measure(*args.one, args.updates, args.threads)))
        return
    if not Path("../shared/data/multi30k/train.en").is_file():
        sys.exit("needs ../shared/data/multi30k beside the repository")
    peak = matmul_peak(args.threads)
    rows = []
    for model_name in args.models:
        for precision in args.precisions:
            for loss_mode in args.loss:
                out = subprocess.run([sys.executable, __file__, "--one", model_name, precision, loss_mode,
                                      "--updates", str(args.updates), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak_after = matmul_peak(args.threads)
    peak = max(peak, peak_after)
    print(f"Training on Multi30k batches (max_tokens from each config), {args.threads} threads, "
          f"{args.updates} timed updates; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (2048x2048)")
    print("| model | params | precision | output layer + loss | target tok/s | peak RSS (GB) | GFLOP/token "
          "| MFU vs fp32 peak |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        mfu = r["tokens_per_s"] * r["flops_per_token"] / peak
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['precision']} | {r['loss']} | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_rss_gb']:.2f} | "
              f"{r['flops_per_token'] / 1e9:.3f} | {mfu:.1%} |")


if __name__ == "__main__":
    main()
