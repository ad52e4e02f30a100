"""The process settings of cpu.py."""

import platform
import subprocess
import sys

import pytest

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
