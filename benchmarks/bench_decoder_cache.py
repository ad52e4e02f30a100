"""Per-step cost of Transformer decoding with and without the key/value cache.

Without a cache, producing token t means running the decoder over the whole prefix again
(cost grows with t); with the cache, one step runs one new position against stored keys and
values. Random weights of the configured shape; times are medians over repeats.

    python benchmarks/bench_decoder_cache.py [--config configs/multi30k-transformer.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nmtkit.config import load_config
from nmtkit.cpu import machine_header
from nmtkit.model import build_model
from nmtkit.vocabulary import BOS_ID


def median_ms(fn, repeats: int, setup=lambda: None) -> float:
    """Median time of fn(setup()), setup untimed."""
    fn(setup())  # warm-up
    times = []
    for _ in range(repeats):
        arg = setup()
        start = time.perf_counter()
        fn(arg)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/multi30k-transformer.yaml")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--src-len", type=int, default=20)
    p.add_argument("--prefixes", default="8,32,128,256")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(machine_header())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, ["data.train_src=x", "data.train_tgt=x"]).model
    model = build_model(cfg, args.vocab, args.vocab).eval()
    src = torch.randint(4, args.vocab, (args.batch, args.src_len))
    lengths = torch.full((args.batch,), args.src_len)
    rows = []
    with torch.inference_mode():
        enc = model.encode(src, lengths)
        for prefix in [int(x) for x in args.prefixes.split(",")]:
            tokens = torch.randint(4, args.vocab, (args.batch, prefix))
            tokens[:, 0] = BOS_ID
            # with the cache: the state after prefix-1 steps, then time one step
            state = model.init_state(enc)
            for t in range(prefix - 1):
                _, state = model.step(tokens[:, t], state)
            last = tokens[:, prefix - 1]

            def fresh_copy(state=state):
                return state.select(torch.arange(args.batch))  # a state is stepped from once

            def cached(copy, last=last):
                model.step(last, copy)

            def uncached(_, tokens=tokens):
                out = model.decoder(tokens, enc)  # the whole prefix again
                torch.log_softmax(model.generator(out[:, -1]), dim=-1)

            with_cache = median_ms(cached, args.repeats, setup=fresh_copy)
            without = median_ms(uncached, args.repeats)
            rows.append((prefix, with_cache, without))
    print(f"Transformer decoder step, d_model {cfg.d_model}, {cfg.decoder_layers} layers, "
          f"vocab {args.vocab}, batch {args.batch}, source {args.src_len} tokens, "
          f"{args.threads} threads; median of {args.repeats}")
    print("| prefix length | step with cache (ms) | step without cache (ms) | speed-up |")
    print("|---:|---:|---:|---:|")
    for prefix, a, b in rows:
        print(f"| {prefix} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")
    first, last = rows[0], rows[-1]
    print(f"\ncost growth from prefix {first[0]} to {last[0]}: with cache "
          f"{last[1] / first[1]:.2f}x, without {last[2] / first[2]:.2f}x")


if __name__ == "__main__":
    main()
