"""Where a training run's resident memory goes: the trainer driven by hand, with the resident
memory printed after each phase (updates, validations, checkpoint saves, then all in turn).

    python benchmarks/bench_memory.py [--config configs/multi30k-transformer.yaml]
        [--precision bf16] [--no-keep-freed-memory] [--trim] [--set KEY=VALUE ...]

Training bounds oneDNN's cache of compiled bf16 kernels (cpu.bound_onednn_cache); to see
oneDNN's default, run with ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 (0: no cache, 7x slower).
The malloc columns are glibc's own account: memory in use, freed but held, mmapped. --trim
hands the held memory back to the kernel (malloc_trim) after each validation, to see whether
the updates that follow need it again.

Needs the config's data (../shared/data/multi30k for the shipped configs). The run folder is a
temporary one, deleted at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from pathlib import Path

import nmtkit.training as training
from nmtkit.config import load_config
from nmtkit.cpu import libc_function, machine_header
from nmtkit.training import Trainer, memory_gb


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def malloc_gb() -> dict[str, float]:
    """glibc's own account (all arenas): bytes handed out, bytes freed but held, bytes in mmapped
    blocks. Resident memory growing with `free` is fragmentation; with `in_use`, something lives on."""
    mallinfo2 = libc_function("mallinfo2")  # glibc 2.33 and later
    if mallinfo2 is None:
        return {}
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return {"in_use": info.uordblks / 1e9, "free": info.fordblks / 1e9, "mmapped": info.hblkhd / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/multi30k-transformer.yaml")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc at its defaults (training calls keep_freed_memory)")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after each validation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args()
    print(machine_header())
    if args.no_keep_freed_memory:
        training.keep_freed_memory = lambda: 0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"training.out_dir={Path(tmp) / 'run'}",
                                        f"training.precision={args.precision}", *args.set])
        trainer = Trainer(cfg, log=lambda *_: None)
        trainer.setup()
        batches = iter(trainer.sampler)

        def updates(n: int) -> None:
            for _ in range(n):
                trainer._update([next(batches)])

        trim = libc_function("malloc_trim") if args.trim else None

        def validate() -> None:
            trainer.evaluate()
            if trim is not None:
                trim(0)

        def show(what: str) -> None:
            heap = malloc_gb()
            print(f"| {what} | {memory_gb().get('rss_gb', float('nan')):.3f} | "
                  + " | ".join(f"{heap.get(k, float('nan')):.3f}" for k in ("in_use", "free", "mmapped"))
                  + " |", flush=True)

        print(f"{args.config}, {args.precision}, keep_freed_memory {not args.no_keep_freed_memory}, "
              f"trim {args.trim}\n")
        print("| after | resident GB | malloc: in use | free, held | mmapped |\n|---|---:|---:|---:|---:|")
        show("setup")
        updates(30)
        show("30 updates")
        for i in range(4):
            validate()
            show(f"validation {i + 1}")
        for i in range(4):
            trainer._save(None)
            show(f"checkpoint save {i + 1}")
        updates(30)
        show("30 more updates")
        for i in range(3):
            validate()
            trainer._save(None)
            updates(10)
            show(f"validation, save, 10 updates ({i + 1})")


if __name__ == "__main__":
    main()
