"""The CPU-specific speed paths side by side, on whatever CPU (or instruction-set limit) this runs:
is each one worth taking here?

    decoding   a Transformer decoder (configs/multi30k-transformer.yaml's shape, random weights)
               greedy and beam 5 with its linear layers plain (F.linear), oneDNN-packed
               (quantize.pack_linears, the Translator's default) and int8 (--quantize int8)

Everything is timed in turns in one run, the fastest of --repeats; ratios are what to read. Run it
as is and as an AVX2 CPU would, to see what holds there:

    python benchmarks/bench_cpu_paths.py
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_cpu_paths.py

(MKL does the plain path's fp32 products and picks AVX512 by itself unless held to AVX2 too:
nmtkit.cpu.AVX2_SETTINGS. bf16 training and bf16 attention by hand: bench_training.py and
bench_attention.py, under the same settings; glibc's malloc settings: bench_malloc.py, which
runs both settings itself.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nmtkit from this checkout

from nmtkit.config import load_config  # noqa: E402
from nmtkit.cpu import machine_header  # noqa: E402
from nmtkit.data import collate_source  # noqa: E402
from nmtkit.model import build_model  # noqa: E402
from nmtkit.quantize import pack_linears, quantize_int8  # noqa: E402
from nmtkit.search import beam_search, greedy_search  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi30k-transformer.yaml"


def decoders(vocab: int) -> dict[str, torch.nn.Module]:
    """The same random-weight model three ways."""
    cfg = load_config(CONFIG).model.model_copy(update={"dropout": 0.0})
    torch.manual_seed(0)
    plain = build_model(cfg, vocab, vocab).eval()
    packed = build_model(cfg, vocab, vocab).eval()
    packed.load_state_dict(plain.state_dict())
    pack_linears(packed)
    return {"plain": plain, "packed": packed, "int8": quantize_int8(plain)}


def decode_once(model: torch.nn.Module, src: torch.Tensor, lengths: torch.Tensor, beam: int,
                steps: int) -> float:
    """Seconds to decode one batch for exactly `steps` steps."""
    limits = {"max_len_a": 0.0, "max_len_b": steps - 1, "min_len": steps - 1}
    start = time.perf_counter()
    with torch.inference_mode():
        if beam == 1:
            greedy_search(model, src, lengths, **limits)
        else:
            beam_search(model, src, lengths, beam, 1.0, **limits)
    return time.perf_counter() - start


def time_decoding(models: dict[str, torch.nn.Module], sentences: list[list[int]], beam: int,
                  steps: int, repeats: int) -> dict[str, float]:
    """Each model's fastest time over `repeats` rounds, the models taking turns within each
    round: on a shared machine the least disturbed run is the one to compare, and turns spread
    the disturbance over all of them."""
    src, lengths = collate_source(sentences)
    for model in models.values():  # one-off costs (oneDNN kernels, first allocations)
        decode_once(model, src, lengths, beam, steps)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(decode_once(model, src, lengths, beam, steps))
    return {name: min(t) for name, t in times.items()}


def sentences(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(4, vocab, (length,), generator=g).tolist() for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--sentences", type=int, default=16, help="sentences per batch")
    p.add_argument("--steps", type=int, default=20, help="decoder steps per sentence")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_header())
    print(f"{args.threads} threads; a batch of {args.sentences} random 13-token sentences, "
          f"{args.steps} decoder steps each; the fastest of {args.repeats}, in turns")
    models = decoders(args.vocab)
    batch = sentences(args.sentences, 13, args.vocab)
    print("| path | search | ms per batch | vs plain |\n|---|---|---:|---:|")
    for beam in (1, 5):
        best = time_decoding(models, batch, beam, args.steps, args.repeats)
        for name, seconds in best.items():
            base = best["plain"]
            print(f"| {name} | {'greedy' if beam == 1 else f'beam {beam}'} | {1000 * seconds:.0f} "
                  f"| {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
