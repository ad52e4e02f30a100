"""Wall time until the validation BLEU of a run first reaches a threshold, from its log.jsonl.

    python benchmarks/time_to_quality.py runs/multi30k-rnn runs/multi30k-transformer [--bleu 30]
        [--plot valid-bleu.png]

With --plot, also draws every run's valid BLEU against wall-clock minutes, without decoding
anything (multi30k.py uses the same two pieces for the runs it trains).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nmtkit.cpu import machine_header
from nmtkit.training import load_log


def validations(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["type"] == "valid" and r.get("bleu") is not None]


def first_reaching(log: list[dict[str, Any]], bleu: float) -> dict[str, Any] | None:
    """The first validation record of a run whose BLEU is at least `bleu`."""
    return next((r for r in validations(log) if r["bleu"] >= bleu), None)


def plot(curves: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, log in curves.items():
        valid = validations(log)
        ax.plot([r["elapsed_s"] / 60 for r in valid], [r["bleu"] for r in valid], marker="o", markersize=2,
                label=name)
    ax.axhline(30, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("wall-clock minutes (training and validation, 2 CPU cores)")
    ax.set_ylabel("valid BLEU (greedy)")
    ax.set_title("Multi30k En-De: validation BLEU over training time")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"\nplot: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--bleu", type=float, default=30.0)
    p.add_argument("--plot", type=Path, help="write valid BLEU over minutes to this PNG")
    args = p.parse_args()
    print(machine_header())
    print(f"| run | valid BLEU >= {args.bleu:g} after | at update | best valid BLEU | run length |")
    print("|---|---:|---:|---:|---:|")
    logs = {run: load_log(Path(run)) for run in args.runs}
    for run, log in logs.items():
        valid = validations(log)
        if not valid:
            print(f"| {run} | no validation yet | | | |")
            continue
        hit = first_reaching(log, args.bleu)
        best = max(valid, key=lambda r: r["bleu"])
        reached = f"{hit['elapsed_s'] / 60:.1f} min" if hit else "not reached"
        print(f"| {run} | {reached} | {hit['step'] if hit else '-'} | {best['bleu']:.2f} "
              f"(update {best['step']}) | {valid[-1]['elapsed_s'] / 60:.1f} min |")
    if args.plot:
        plot({Path(run).name: log for run, log in logs.items()}, args.plot)


if __name__ == "__main__":
    main()
