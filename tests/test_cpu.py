"""The process settings of cpu.py."""

import os
import platform
import subprocess
import sys

import pytest

from nmtkit import cpu
from nmtkit.cpu import AVX2_SETTINGS

PAGE_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from nmtkit.cpu import keep_freed_memory
    if keep_freed_memory() < 64 << 20:
        print("unsupported")  # an older glibc: blocks this large are still mapped afresh
        sys.exit()
for _ in range(10):
    torch.ones(16 << 20)  # warm up: the first blocks are new memory in any case, and small
    # allocations made meanwhile (thread pools starting) can push the next few to new addresses
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 << 20)  # 64 MiB (past the 32 MiB where glibc always maps afresh): allocated, touched, freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
def test_keep_freed_memory_stops_page_faults_per_step() -> None:
    """With glibc's defaults a 64 MiB tensor (16384 pages) is fresh memory from the kernel each
    time it is allocated; after keep_freed_memory freed blocks are reused."""
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True,
                             text=True, check=True)
        if out.stdout.strip() == "unsupported":
            pytest.skip("this glibc keeps blocks below 32 MiB only")
        faults[mode] = int(out.stdout)
    assert faults["default"] > 15 * 16384  # (nearly) every one of the 20 blocks faulted in
    assert faults["keep"] < 4 * 16384  # a few at most


ONEDNN_SHAPES = """
import os, sys, torch
if sys.argv[1] == "bound":
    from nmtkit.cpu import bound_onednn_cache
    bound_onednn_cache(16)
def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.set_num_threads(1)
weight = torch.randn(256, 1024, dtype=torch.bfloat16)
for rows in range(1, 41):  # warm up: thread pools, the allocator's first blocks
    torch.randn(rows, 256, dtype=torch.bfloat16) @ weight
before = resident()
for rows in range(41, 801):  # a new shape each time, as token batches give
    torch.randn(rows, 256, dtype=torch.bfloat16) @ weight
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), resident() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/statm")
def test_bound_onednn_cache_keeps_memory_flat_over_new_shapes() -> None:
    """bf16 products of 760 new shapes: oneDNN's default cache keeps a compiled primitive for
    each (memory grows); bounded, the old ones are dropped. A user's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    grown = {}
    for mode in ("default", "bound"):
        out = subprocess.run([sys.executable, "-c", ONEDNN_SHAPES, mode], capture_output=True,
                             text=True, check=True, env=env).stdout.split()
        assert out[0] == ("16" if mode == "bound" else "None")
        grown[mode] = int(out[1])
    if grown["default"] < 20 << 20:
        pytest.skip(f"bf16 products do not go through a caching oneDNN here ({grown})")
    # measured here: 548 MB by default, 319 MB bounded (the rest of the growth is not the cache)
    assert grown["bound"] < 0.8 * grown["default"], grown
    out = subprocess.run([sys.executable, "-c", ONEDNN_SHAPES, "bound"], capture_output=True, text=True,
                         check=True, env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "512"}).stdout.split()
    assert out[0] == "512"




@pytest.fixture
def cpu_like(monkeypatch):
    """Make native_bf16 see a CPU with the given flags, PyTorch capability and oneDNN limit."""
    import torch

    from nmtkit import cpu

    def like(flags: set[str], capability: str = "AVX512", isa: str | None = None) -> tuple[bool, str]:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        cpu.native_bf16.cache_clear()
        return cpu.native_bf16()

    yield like
    cpu.native_bf16.cache_clear()


@pytest.mark.avx2
def test_native_bf16_needs_the_instructions_and_both_libraries_allowed_to_use_them(cpu_like) -> None:
    assert cpu_like({"avx2", "avx512f", "avx512_bf16"}) == (
        True, "the CPU has AVX512-BF16 (PyTorch's capability AVX512)")
    assert cpu_like({"avx2", "amx_bf16"}, isa="AVX512_CORE_AMX")[0]
    assert cpu_like({"avx512_bf16"}, isa="avx512_core_bf16")[0]
    native, why = cpu_like({"avx2", "avx512f"})  # AVX512 without its bf16 extension
    assert not native and "neither AVX512-BF16 nor AMX" in why
    native, why = cpu_like({"avx512_bf16"}, capability="AVX2")
    assert not native and "ATEN_CPU_CAPABILITY" in why
    for isa in ("AVX2", "AVX512_CORE", "AVX512_CORE_VNNI"):
        native, why = cpu_like({"avx512_bf16"}, isa=isa)
        assert not native and f"held to {isa} (ONEDNN_MAX_CPU_ISA)" in why


@pytest.mark.avx2
def test_the_avx2_settings_count_as_a_cpu_without_native_bf16() -> None:
    out = subprocess.run([sys.executable, "-c", "from nmtkit.cpu import native_bf16; print(native_bf16())"],
                         capture_output=True, text=True, check=True, env={**os.environ, **AVX2_SETTINGS})
    assert out.stdout.startswith("(False, ")


def test_packing_pays_only_off_intel(monkeypatch) -> None:
    """Prepacked oneDNN linears beat MKL's F.linear on AMD (MKL's fast paths are Intel's) and lose
    to it on Intel, with AVX-512 or held to AVX2 (bench_cpu_paths.py): a Translator packs by
    default only where they pay."""

    def pays(vendor: str) -> tuple[bool, str]:
        monkeypatch.setattr(cpu, "cpu_vendor", lambda: vendor)
        cpu.packing_pays.cache_clear()
        return cpu.packing_pays()

    try:
        native, why = pays("GenuineIntel")
        assert not native and "Intel" in why
        assert pays("AuthenticAMD") == (True, "AuthenticAMD: oneDNN's packed products beat MKL's F.linear")
        assert pays("")[0]
    finally:
        cpu.packing_pays.cache_clear()


@pytest.mark.avx2
def test_a_translator_packs_by_default_only_where_packing_pays(numbers_checkpoint, monkeypatch) -> None:
    from nmtkit.quantize import PackedLinear, can_pack
    from nmtkit.translator import Translator

    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    for vendor in ("GenuineIntel", "AuthenticAMD"):
        monkeypatch.setattr(cpu, "cpu_vendor", lambda vendor=vendor: vendor)
        cpu.packing_pays.cache_clear()
        t = Translator.load(numbers_checkpoint)
        assert any(isinstance(m, PackedLinear) for m in t.model.modules()) == (vendor == "AuthenticAMD")
    cpu.packing_pays.cache_clear()
    assert not any(isinstance(m, PackedLinear) for m in Translator.load(numbers_checkpoint, pack=False).model.modules())
    assert any(isinstance(m, PackedLinear) for m in Translator.load(numbers_checkpoint, pack=True).model.modules())
