"""Process settings that make PyTorch fast on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable


def libc_function(name: str) -> Callable | None:
    """A function of the C library (ctypes), or None where there is none by that name."""
    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> int:
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the kernel.

    Every decoding step allocates and frees tensors of megabytes (logits over the vocabulary,
    layer outputs for every beam), and every training update tens of them (the output layer's
    scores and their gradient: tokens x vocabulary). glibc returns blocks that large to the
    kernel as soon as they are freed (mmap/munmap, heap trimming), so the next step pays for
    page faults and for the kernel zeroing fresh pages: here the matrix multiplies of a decoder
    step ran 30% slower for it, beam search 7-10% slower as a whole, and a small Transformer
    trained 1.45x slower. Keeping the memory is what a caching allocator (CTranslate2's, or
    jemalloc/tcmalloc, as the PyTorch CPU tuning guides suggest) achieves; the cost is that the
    process holds on to its peak memory. Process-wide. Returns the size up to which blocks now
    come from the heap, or 0, having changed nothing, where the C library is not glibc or
    refuses the settings."""
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return 0
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    # Blocks below the threshold come from the heap. Older glibc accepts at most 32 MiB; the
    # threshold goes first because setting any of the three freezes glibc's own adaptive one.
    threshold = next((t for t in (1 << 30, 32 << 20) if mallopt(m_mmap_threshold, t)), 0)
    if threshold:
        mallopt(m_trim_threshold, (1 << 31) - 1)  # never trim the heap's free top
        mallopt(m_top_pad, 256 << 20)  # and grow it in steps of 256 MiB
    return threshold


def bound_onednn_cache(capacity: int = 64) -> None:
    """Keep at most `capacity` oneDNN primitives (compiled kernels for one matrix shape each)
    unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY. bf16 matrix products on the CPU run
    through oneDNN, and token batches give nearly every update new shapes (sentences x length),
    so its cache of 1024 filled over a run: resident memory drifted upward by a gigabyte (a
    Transformer bf16 run, 1.9 -> 3.0 GB in 12 minutes). 64 held it about 0.45 GB lower at the same
    speed (benchmarks/bench_memory.py, bench_training.py); 0, no cache, ran 7x slower. oneDNN
    reads the variable once, at its first primitive: call this before any bf16 work."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
