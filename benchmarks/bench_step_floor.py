"""Where one beam-5 decoder step's time goes at batch 1, and how far compilation takes it.

A Transformer step at 5 rows (one sentence, beam 5) is mostly fixed cost: small matrix
products and the Python and dispatch around them. This script measures, for the Multi30k
Transformer shape (d_model 256, 3 decoder layers, 8000 target pieces; random weights):

1. each matrix product of a step at its real shape, three ways: PyTorch's `F.linear`, the
   oneDNN-packed weights nmtkit's Translator uses, and dynamic int8 (what `--quantize int8`
   runs); the sum is the floor any step built from these kernels pays;
2. the step itself: the model's `step` as search calls it (eager, packed, int8), a hand-written
   static-shape step (preallocated cache, a mask instead of a growing length) in eager mode,
   and that step under `torch.compile` (default; and max-autotune with freezing and the C++
   wrapper), with the compile time and the top-level operator count.

    python benchmarks/bench_step_floor.py --threads 1
    python benchmarks/bench_step_floor.py --threads 2 --no-compile

CTranslate2's step at the same shape comes from `bench_decoding.py` (its sentences/s at 40
steps per sentence).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.config import TransformerConfig
from nmtkit.cpu import machine_header
from nmtkit.quantize import pack_linears, quantize_int8
from nmtkit.transformer import build_transformer

D, HEADS, FF, LAYERS, VOCAB = 256, 4, 1024, 3, 8000
ROWS, MAX_LEN, SRC_LEN = 5, 64, 14  # beam 5, cache room, source pieces


def median_us(fn: Callable[[], object], repeats: int = 300) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def product_us(k: int, n: int) -> list[float]:
    """One (ROWS x k) @ (k x n) product: F.linear, oneDNN-packed, dynamic int8 (microseconds)."""
    layer = nn.Linear(k, n).eval()
    packed = nn.Sequential(nn.Linear(k, n)).eval()
    packed[0].load_state_dict(layer.state_dict())
    pack_linears(packed)
    int8 = quantize_int8(nn.Sequential(nn.Linear(k, n)).eval())
    x = torch.randn(ROWS, k)
    with torch.no_grad():
        return [median_us(lambda: F.linear(x, layer.weight, layer.bias)),
                median_us(lambda: packed(x)), median_us(lambda: int8(x))]


def gemm_table() -> None:
    """Every matrix product of one step at its shape, and their sum: the floor of a step."""
    shapes = {  # name: (in, out, how many per step)
        "query/key/value (fused)": (D, 3 * D, LAYERS), "attention out": (D, D, 2 * LAYERS),
        "cross query": (D, D, LAYERS), "feed-forward in": (D, FF, LAYERS),
        "feed-forward out": (FF, D, LAYERS), "output layer": (D, VOCAB, 1)}
    totals = [0.0, 0.0, 0.0]
    print(f"| product ({ROWS} rows) | in x out | per step | F.linear µs | oneDNN packed µs "
          "| dynamic int8 µs |")
    print("|---|---|---|---|---|---|")
    for name, (k, n, count) in shapes.items():
        row = product_us(k, n)
        totals = [t + v * count for t, v in zip(totals, row, strict=True)]
        print(f"| {name} | {k} x {n} | {count} | " + " | ".join(f"{v:.0f}" for v in row) + " |")
    print("| **all products of one step** | | | "
          + " | ".join(f"**{v / 1000:.2f} ms**" for v in totals) + " |")


def static_step(model: nn.Module) -> Callable[..., Tensor]:
    """One step with every shape fixed: the cache is preallocated at MAX_LEN and a mask says
    which positions are filled, so a compiled graph never sees a new shape."""
    dec, hd = model.decoder, D // HEADS

    def step(tokens: Tensor, pos: Tensor, keys: list[Tensor], values: list[Tensor],
             cross: list[tuple[Tensor, Tensor]], filled: Tensor) -> Tensor:
        # tokens (rows,); pos: () the new position; keys/values per layer (rows, MAX_LEN, D)
        x = dec.embedding(tokens).unsqueeze(1) * dec.scale  # (rows, 1, D)
        x = x + dec.positions.table.index_select(0, pos.view(1)).view(1, 1, D)
        for i, layer in enumerate(dec.layers):
            h = layer.self_attn_residual.before(x)
            q, k, v = layer.self_attn.qkv_proj(h).chunk(3, dim=-1)  # each (rows, 1, D)
            keys[i].index_copy_(1, pos.view(1), k)
            values[i].index_copy_(1, pos.view(1), v)
            query = q.view(ROWS, 1, HEADS, hd).transpose(1, 2)  # (rows, heads, 1, hd)
            key = keys[i].view(ROWS, MAX_LEN, HEADS, hd).transpose(1, 2)
            value = values[i].view(ROWS, MAX_LEN, HEADS, hd).transpose(1, 2)
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=filled.view(1, 1, 1, MAX_LEN))  # (rows, heads, 1, hd)
            context = context.transpose(1, 2).reshape(ROWS, 1, D)
            x = layer.self_attn_residual.after(x, layer.self_attn.out_proj(context))
            h = layer.cross_attn_residual.before(x)
            query = layer.cross_attn.q_proj(h).view(1, ROWS, HEADS, hd).transpose(1, 2)  # (1, heads, rows, .)
            key, value = cross[i]  # (1, heads, src_len, hd): one sentence, shared by its beams
            context = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(ROWS, 1, D)
            x = layer.cross_attn_residual.after(x, layer.cross_attn.out_proj(context))
            x = layer.ff_residual.after(x, layer.ff(layer.ff_residual.before(x)))
        return F.log_softmax(model.generator(dec.final_norm(x)).squeeze(1), dim=-1)  # (rows, vocab)

    return step


def operator_count(fn: Callable[[], object]) -> int:
    from torch.profiler import profile
    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None)


def step_table(compile_too: bool) -> None:
    cfg = TransformerConfig(d_model=D, heads=HEADS, ff_size=FF, encoder_layers=3, decoder_layers=LAYERS,
                            share_embeddings=True, dropout=0.0)
    torch.manual_seed(1)
    rows = []
    src = torch.randint(4, VOCAB, (1, SRC_LEN))

    def model_step(model: nn.Module) -> Callable[[], object]:
        """The search's call: model.step on 5 rows of one sentence, the cache reserved."""
        with torch.no_grad():
            enc = model.encode(src, torch.tensor([SRC_LEN]))
        tokens = torch.randint(4, VOCAB, (ROWS,))

        def fresh() -> object:
            return model.init_state(enc, MAX_LEN).select(torch.zeros(ROWS, dtype=torch.long))
        state = fresh()

        def run() -> None:
            nonlocal state
            if state.position >= MAX_LEN - 1:  # one sample in 60 starts a new sentence
                state = fresh()
            with torch.no_grad():
                _, state = model.step(tokens, state)
        return run

    variants = {"model.step, eager": lambda m: m,
                "model.step, oneDNN packed (the Translator's fp32)": lambda m: (pack_linears(m), m)[1],
                "model.step, int8 (--quantize int8)": quantize_int8}
    for name, prepare in variants.items():
        fn = model_step(prepare(build_transformer(cfg, VOCAB, VOCAB).eval()))
        rows.append((name, median_us(fn, 200) / 1000, operator_count(fn), ""))

    model = build_transformer(cfg, VOCAB, VOCAB).eval()
    pack_linears(model)
    step = static_step(model)
    tokens = torch.randint(4, VOCAB, (ROWS,))
    keys = [torch.zeros(ROWS, MAX_LEN, D) for _ in range(LAYERS)]
    values = [torch.zeros(ROWS, MAX_LEN, D) for _ in range(LAYERS)]
    with torch.no_grad():
        memory = torch.randn(1, SRC_LEN, D)
        cross = [layer.cross_attn.memory_kv(memory) for layer in model.decoder.layers]
    position = iter(range(10**9))

    def call(fn: Callable[..., Tensor]) -> Callable[[], object]:
        def run() -> None:
            p = 10 + next(position) % 40
            with torch.no_grad():
                fn(tokens, torch.tensor(p), keys, values, cross, torch.arange(MAX_LEN) <= p)
        return run

    rows.append(("static step, packed, eager", median_us(call(step), 200) / 1000,
                 operator_count(call(step)), ""))
    if compile_too:  # on plain weights: inductor packs them itself (with freezing), not our oneDNN op
        import torch._inductor.config as inductor

        plain = build_transformer(cfg, VOCAB, VOCAB).eval()
        step = static_step(plain)
        with torch.no_grad():
            cross[:] = [layer.cross_attn.memory_kv(memory) for layer in plain.decoder.layers]
        for name, mode, freeze in [("static step, torch.compile", None, False),
                                   ("static step, compile max-autotune + freezing + C++ wrapper",
                                    "max-autotune-no-cudagraphs", True)]:
            torch._dynamo.reset()
            inductor.freezing = inductor.cpp_wrapper = freeze
            compiled = torch.compile(step, dynamic=False, mode=mode)
            start = time.perf_counter()
            call(compiled)()
            seconds = time.perf_counter() - start
            rows.append((name, median_us(call(compiled), 200) / 1000, operator_count(call(compiled)),
                         f"{seconds:.0f} s"))
    print(f"| step ({ROWS} rows, {LAYERS} layers, vocab {VOCAB}) | ms per step | top-level operators "
          "| compile |")
    print("|---|---|---|---|")
    for name, ms, ops, compile_s in rows:
        print(f"| {name} | {ms:.2f} | {ops} | {compile_s} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (about 1 minute)")
    args = p.parse_args()
    print(machine_header())
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    gemm_table()
    print()
    step_table(not args.no_compile)


if __name__ == "__main__":
    main()
