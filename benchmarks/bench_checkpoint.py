"""What verifying checkpoint checksums costs when a Multi30k-sized model is loaded.

    python benchmarks/bench_checkpoint.py [--config configs/multi30k-transformer.yaml]
        [--vocab 8000] [--repeats 5] [--threads 1]

Builds the config's model with random weights (a joint vocabulary of --vocab pieces, as
multi30k-transformer.yaml's BPE 8000) and writes its model.safetensors and, as a training
checkpoint holds them, its two Adam moments (training.safetensors) into a temp folder. Then it
times, best of --repeats with the files in the page cache (as after training, or on a second
load):

    load weights   what load_checkpoint does for the weights: build the model, load_model
    sha256         the checksum load_checkpoint now verifies (hashlib, hardware SHA where
                   the CPU has it)
    blake2b, crc32 the alternatives, for comparison

and prints a markdown table. A cold cache adds the disk read to both, once (the hash reads
the pages that loading then finds in memory).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model

from nmtkit.checkpoint import file_checksum
from nmtkit.config import load_config
from nmtkit.model import build_model, count_parameters


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hash_file(path: Path, name: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, name).hexdigest()


def crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/multi30k-transformer.yaml")
    p.add_argument("--vocab", type=int, default=8000, help="pieces in the (joint) vocabulary")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (loading is not parallel)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = build_model(cfg.model, args.vocab, args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_model(model, str(weights))
        training = Path(tmp) / "training.safetensors"
        save_file({f"{k}.{m}": torch.randn_like(v) for k, v in model.named_parameters()
                   for m in ("exp_avg", "exp_avg_sq")}, str(training))  # tied weights once

        def load_weights() -> None:
            load_model(build_model(cfg.model, args.vocab, args.vocab), str(weights))

        load_s = best_of(load_weights, args.repeats)
        rows = [("load weights (build_model + load_model)", weights, load_s)]
        for label, path, fn in (
            ("sha256 (verified on load)", weights, lambda: file_checksum(weights)),
            ("blake2b", weights, lambda: hash_file(weights, "blake2b")),
            ("crc32 (zlib)", weights, lambda: crc32_file(weights)),
            ("sha256 of training.safetensors (--resume)", training, lambda: file_checksum(training)),
        ):
            rows.append((label, path, best_of(fn, args.repeats)))
        print(f"{args.config}: {type(cfg.model).__name__}, {count_parameters(model):,} parameters "
              f"(vocab {args.vocab}); best of {args.repeats}, warm page cache, "
              f"{args.threads} torch thread(s)\n")
        print("| step | file | MB | ms | MB/s | vs. load weights |")
        print("|---|---|---:|---:|---:|---:|")
        for label, path, seconds in rows:
            mb = path.stat().st_size / 1e6
            print(f"| {label} | {path.name} | {mb:.1f} | {seconds * 1000:.1f} | "
                  f"{mb / seconds:,.0f} | {seconds / load_s:.0%} |")
        verify_ms = rows[1][2] * 1000
        print(f"\nverifying adds {verify_ms:.1f} ms to loading the weights "
              f"({verify_ms / (load_s * 1000):.0%} of {load_s * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
