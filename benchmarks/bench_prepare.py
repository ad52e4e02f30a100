"""`nmtkit prepare` on a corpus repeated 1x, 8x and 32x: its time should grow linearly and its
peak memory stay flat (it streams: validation, subword sampling and binarization in bounded
memory).

    python benchmarks/bench_prepare.py ../shared/data/tatoeba-en-fr/all.{en,fr} --work DIR \
        [--copies 1 8 32]

The pair is split once (`nmtkit split`, 1,000 valid and 1,000 test pairs); the training part is
written repeated N times into --work, and each `prepare` runs in a process of its own (peak RSS
from the kernel's accounting of that child, `wait4`). Vocabulary: joint BPE 8000, as in
configs/base-transformer.yaml. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from nmtkit.cpu import machine_header


def run_prepare(config: Path) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of one `nmtkit prepare` in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nmtkit.cli", "prepare", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"prepare {config} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024**2  # ru_maxrss is in kB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("tgt")
    p.add_argument("--work", required=True, help="a new or empty folder for the corpora and outputs")
    p.add_argument("--copies", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    print(machine_header())
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    split = work / "split"
    subprocess.run([sys.executable, "-m", "nmtkit.cli", "split", args.src, args.tgt, "--out", str(split),
                    "--valid", "1000", "--test", "1000"], check=True, stdout=subprocess.DEVNULL)
    sides = {"src": Path(args.src).suffix.lstrip("."), "tgt": Path(args.tgt).suffix.lstrip(".")}
    train = {side: (split / f"train.{ext}").read_bytes() for side, ext in sides.items()}
    lines = train["src"].count(b"\n")
    rows, first = [], None
    for n in args.copies:
        corpus = work / f"x{n}"
        corpus.mkdir()
        for side, text in train.items():
            with open(corpus / f"train.{side}", "wb") as f:
                for _ in range(n):
                    f.write(text)
        config = corpus / "config.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"train_src": str(corpus / "train.src"), "train_tgt": str(corpus / "train.tgt"),
                     "valid_src": str(split / f"valid.{sides['src']}"),
                     "valid_tgt": str(split / f"valid.{sides['tgt']}"),
                     "test_src": str(split / f"test.{sides['src']}"),
                     "test_tgt": str(split / f"test.{sides['tgt']}"),
                     "out_dir": str(corpus / "bin"), "max_len": 100},
            "vocab": {"type": "bpe", "size": 8000, "joint": True}}))
        seconds, rss = run_prepare(config)
        first = first or (seconds / n, rss)
        megabytes = n * (len(train["src"]) + len(train["tgt"])) / 1e6
        rows.append(f"| {n}x | {n * lines:,} | {megabytes:,.1f} MB | {seconds:.1f} s | "
                    f"{seconds / n / first[0]:.2f} | {rss:.2f} GB | {rss / first[1]:.2f} |")
        for side in ("src", "tgt"):
            (corpus / f"train.{side}").unlink()  # keep the disk free for the next size
    print(f"nmtkit prepare, joint BPE 8000, {os.cpu_count()} CPUs\n")
    print("| copies | training pairs | text | time | time per copy vs 1x | peak RSS | RSS vs 1x |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
