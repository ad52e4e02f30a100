"""Attention on the CPU, three ways: SDPA's fused (flash) kernel, SDPA's unfused math kernel,
and nmtkit's `attention_by_hand` (matmul, softmax, matmul), in fp32 and bf16, forward +
backward (training) and forward only, at the lengths of sentences.

    python benchmarks/bench_attention.py [--threads 2] [--tokens 4096]

Each row is a batch of about --tokens tokens of one length, 4 heads of 64, a padding mask on the
keys (as the encoder's self-attention and the cross-attention have). Also printed: the memory a
forward pass allocates and keeps for the backward (torch.profiler). The table is why
`transformer_layers.unfused_trains_faster` trains bf16 attention by hand up to 256 positions and
leaves everything else to the fused kernel.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from nmtkit.cpu import machine_header
from nmtkit.transformer_layers import attention_by_hand


def fused(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def by_hand(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return attention_by_hand(q, k, v, mask)[0]


def measure(attend: Callable, batch: int, length: int, dtype: torch.dtype, train: bool,
            heads: int = 4, head_dim: int = 64, repeats: int = 10) -> tuple[float, float]:
    """Median milliseconds, and MB the forward pass allocates and keeps (with train)."""
    q, k, v = (torch.randn(batch, heads, length, head_dim, dtype=dtype, requires_grad=train)
               for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (batch,))
    mask = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :]
    times = []
    with torch.set_grad_enabled(train):
        for _ in range(repeats + 3):
            start = time.perf_counter()
            out = attend(q, k, v, mask)
            if train:
                out.float().sum().backward()
            times.append(time.perf_counter() - start)
        with profile(profile_memory=True) as prof:
            out = attend(q, k, v, mask)
        kept = sum(e.self_cpu_memory_usage for e in prof.key_averages()) / 1e6
    return 1000 * sorted(times[3:])[len(times[3:]) // 2], kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 14, 30, 60, 120, 180, 250])
    args = p.parse_args()
    print(machine_header())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ways = {"fused": fused, "math": sdpa_math, "by hand": by_hand}
    print(f"Attention on the CPU, {args.threads} threads, batches of about {args.tokens} tokens, 4 heads "
          "of 64, key padding mask; median ms, and MB a training forward keeps")
    headers = [f"{what}: {w}" for what in ("train", "MB kept", "forward") for w in ways]
    print("| dtype | length x batch | " + " | ".join(headers) + " |")
    print("|---|---|" + "---:|" * 3 * len(ways))
    for dtype in (torch.bfloat16, torch.float32):
        for length in args.lengths:
            batch = max(1, args.tokens // length)
            train = [measure(w, batch, length, dtype, True) for w in ways.values()]
            forward = [measure(w, batch, length, dtype, False)[0] for w in ways.values()]
            cells = [f"{ms:.1f}" for ms, _ in train] + [f"{mb:.1f}" for _, mb in train]
            cells += [f"{ms:.1f}" for ms in forward]
            print(f"| {str(dtype).removeprefix('torch.')} | {length} x {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
