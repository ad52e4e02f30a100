"""Wall time until the validation BLEU of a run first reaches a threshold, from its log.jsonl.

    python benchmarks/time_to_quality.py runs/multi30k-rnn runs/multi30k-transformer [--bleu 30]
        [--plot valid-bleu.png]

With --plot, also draws every run's valid BLEU against wall-clock minutes (as multi30k.py does
for the runs it trains), without decoding anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmtkit.training import load_log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--bleu", type=float, default=30.0)
    p.add_argument("--plot", type=Path, help="write valid BLEU over minutes to this PNG")
    args = p.parse_args()
    print(f"| run | valid BLEU >= {args.bleu:g} after | at update | best valid BLEU | run length |")
    print("|---|---:|---:|---:|---:|")
    for run in args.runs:
        valid = [r for r in load_log(Path(run)) if r["type"] == "valid" and r.get("bleu") is not None]
        if not valid:
            print(f"| {run} | no validation yet | | | |")
            continue
        hit = next((r for r in valid if r["bleu"] >= args.bleu), None)
        best = max(valid, key=lambda r: r["bleu"])
        reached = f"{hit['elapsed_s'] / 60:.1f} min" if hit else "not reached"
        print(f"| {run} | {reached} | {hit['step'] if hit else '-'} | {best['bleu']:.2f} "
              f"(update {best['step']}) | {valid[-1]['elapsed_s'] / 60:.1f} min |")
    if args.plot:
        from multi30k import plot  # beside this script

        plot({Path(run).name: load_log(Path(run)) for run in args.runs}, args.plot)


if __name__ == "__main__":
    main()
