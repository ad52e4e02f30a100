"""Attention on the CPU: SDPA's fused (flash) kernel against its unfused math kernel, in fp32 and
bf16, forward + backward (training) and forward only, at the lengths of sentences.

    python benchmarks/bench_attention.py [--threads 2] [--tokens 4096]

Each row is a batch of about --tokens tokens of one length, 4 heads of 64, a padding mask on the
keys (as the encoder's self-attention and the cross-attention have). The table is why
`transformer_layers.unfused_trains_faster` sends bf16 training at up to 192 positions to the math
kernel and leaves everything else to the fused one.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def milliseconds(backend: SDPBackend, batch: int, length: int, dtype: torch.dtype, train: bool,
                 heads: int = 4, head_dim: int = 64, repeats: int = 10) -> float:
    q, k, v = (torch.randn(batch, heads, length, head_dim, dtype=dtype, requires_grad=train)
               for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (batch,))
    mask = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :]
    times = []
    with sdpa_kernel(backend), torch.set_grad_enabled(train):
        for _ in range(repeats + 3):
            start = time.perf_counter()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if train:
                out.sum().backward()
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times[3:])[len(times[3:]) // 2]  # median of the timed repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 14, 30, 60, 120, 180, 250])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"SDPA on the CPU, {args.threads} threads, batches of about {args.tokens} tokens, 4 heads of 64, "
          "key padding mask; median ms")
    print("| dtype | length x batch | train: fused | train: math | math speed-up "
          "| forward: fused | forward: math |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float32):
        for length in args.lengths:
            batch = max(1, args.tokens // length)
            row = [milliseconds(backend, batch, length, dtype, train)
                   for train in (True, False) for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)]
            name = str(dtype).removeprefix("torch.")
            print(f"| {name} | {length} x {batch} | {row[0]:.1f} | {row[1]:.1f} | {row[0] / row[1]:.2f}x "
                  f"| {row[2]:.1f} | {row[3]:.1f} |")


if __name__ == "__main__":
    main()
