"""Process settings that make PyTorch fast on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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


# The environment that holds this process to what a CPU with AVX2 only (no AVX512, no native
# bf16: most laptops) has: PyTorch's own kernels (ATen), oneDNN, and MKL, which does PyTorch's
# fp32 matrix products (F.linear) and picks AVX512 (and AMX) by itself otherwise; for the
# benchmarks' peers, CTranslate2 too. `make test` runs the tests marked avx2 under the first three.
AVX2_SETTINGS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                 "MKL_ENABLE_INSTRUCTIONS": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo); empty elsewhere."""
    return set(_cpuinfo(("flags", "Features")).split())


def _cpuinfo(key: str | tuple[str, ...]) -> str:
    """The first value of a /proc/cpuinfo key (or of any of several) ('' where Linux does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name ('' where Linux does not say), for benchmark headers and logs."""
    return _cpuinfo("model name")


def cpu_vendor() -> str:
    """GenuineIntel, AuthenticAMD, ... ('' where Linux does not say)."""
    return _cpuinfo("vendor_id")


def _onednn_isa_has_bf16(isa: str) -> bool:
    """Whether oneDNN held to ONEDNN_MAX_CPU_ISA=isa may still use bf16 instructions: the
    AVX512_CORE_BF16 level and those above it (FP16, AMX, AVX10), or no limit."""
    isa = isa.upper()
    return isa in ("", "ALL", "DEFAULT") or any(k in isa for k in ("BF16", "FP16", "AMX", "AVX10"))


@functools.cache
def native_bf16() -> tuple[bool, str]:
    """Whether this process computes bf16 on the CPU natively, and why, in words for the log.

    Native means bf16 instructions (AVX512-BF16, or AMX) that PyTorch (ATen) and oneDNN may
    both use. Without them bf16 is emulated: converted to fp32 and back around fp32 arithmetic,
    slower than fp32 itself, and oneDNN has no bf16 LSTM/GRU at all (rnn.py then runs the
    recurrent cells in fp32). ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA, which hold PyTorch and
    oneDNN to a lower instruction set (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`: an
    AVX2 CPU, as most laptops have), count as the CPU they describe."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags()
    found = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))
             if flag in flags]
    if not found:
        return False, f"the CPU has neither AVX512-BF16 nor AMX (PyTorch's capability {capability})"
    if not capability.startswith("AVX512"):
        return False, f"PyTorch is held to {capability} (ATEN_CPU_CAPABILITY)"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if not _onednn_isa_has_bf16(isa):
        return False, f"oneDNN is held to {isa} (ONEDNN_MAX_CPU_ISA)"
    return True, f"the CPU has {' and '.join(found)} (PyTorch's capability {capability})"


@functools.cache
def packing_pays() -> tuple[bool, str]:
    """Whether prepacking fp32 linear layers for oneDNN (quantize.pack_linears) speeds decoding
    up on this CPU, and why. PyTorch's F.linear calls MKL, whose fast paths are for Intel CPUs:
    on an AMD EPYC it ran the decoder's products 10-40% slower than oneDNN's packed layers (beam
    search +19% packed), while on an Intel Xeon packed layers were 0.66-1.05x F.linear, AVX-512 or
    held to AVX2 (benchmarks/bench_cpu_paths.py, docs/guide/cpu.md)."""
    vendor = cpu_vendor()
    if vendor == "GenuineIntel":
        return False, "an Intel CPU: MKL's own products (F.linear) are as fast as oneDNN's packed ones"
    return True, f"{vendor or 'a CPU that is not Intel'}: oneDNN's packed products beat MKL's F.linear"


def bf16_emulated(device_type: str) -> bool:
    """Whether bf16 autocast on this device would be emulated (the CPU without native bf16)."""
    return device_type == "cpu" and not native_bf16()[0]


def machine_header() -> str:
    """One line naming what a speed figure was measured on: the CPU, PyTorch's capability (its
    vector instruction set, AVX2 or AVX512), whether bf16 is native, and any limits set on
    oneDNN, ATen, MKL or CTranslate2. Every benchmark prints it first: figures from an
    AVX512-BF16 machine do not carry over to an AVX2 one."""
    import torch

    native, why = native_bf16()
    limits = [f"{k}={os.environ[k]}" for k in AVX2_SETTINGS if os.environ.get(k)]
    return (f"machine: {cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores; PyTorch "
            f"{torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}"
            f"{' (' + ' '.join(limits) + ')' if limits else ''}; bf16 "
            f"{'native' if native else 'emulated'}: {why}")
