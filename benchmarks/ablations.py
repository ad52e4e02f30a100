"""What each seed idea is worth on Multi30k English->German: one change at a time from a shipped
config, the same data, vocabulary, seed and number of updates per group.

    python benchmarks/ablations.py --data ../shared/data/multi30k [--runs runs/ablations]
        [--updates 600] [--group attention ...] [--jobs 2 --threads 1]

Groups (the base in each is the shipped config, configs/multi30k-rnn.yaml or
configs/multi30k-transformer.yaml, trained for --updates updates with no time limit and no
early stopping):
  attention      none / dot / general (base) / concat / bahdanau                (RNN)
  input_feeding  on (base) / off                                                (RNN, general)
  reversal       source reversal on / off, without attention and with it        (RNN)
  encoder        bidirectional (base) / unidirectional; LSTM (base) / GRU        (RNN)
  sampling       teacher forcing (base) / scheduled sampling (linear to 0.75)    (RNN)
  transformer    positions sinusoidal (base) / learned / none; pre- (base) / post-norm
Then, without training: beam 1 / 5 / 10 with length penalty 0 and 1 (RNN and Transformer bases),
and test BLEU by source sentence length for no attention, attention, and the Transformer.

Each run trains in a process of its own into RUNS/<name> (--jobs at a time, --threads each: the
budget is a number of updates, so two 1-thread runs at once are fair and finish the set sooner
than one 2-thread run after another); finished runs are reused. Test2016
scores (cased sacreBLEU, lowercased BLEU, chrF) from the last checkpoint with beam 5, next to the
run's last greedy valid BLEU from its log. Prints
markdown tables; writes RUNS/ablations.png and RUNS/bleu-by-length.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from multi30k import data_overrides  # beside this script
from time_to_quality import validations

from nmtkit.checkpoint import read_json
from nmtkit.cpu import machine_header
from nmtkit.metrics import score
from nmtkit.training import is_run_folder, load_log
from nmtkit.translator import Translator

RNN, TRANSFORMER = Path("configs/multi30k-rnn.yaml"), Path("configs/multi30k-transformer.yaml")
RNN_BASE, TRANSFORMER_BASE = "rnn-base (general)", "transformer-base (sinusoidal, pre-norm)"
NO_FEEDING = "model.input_feeding=null"  # the default for the attention chosen
GROUPS: dict[str, list[tuple[str, Path, list[str]]]] = {
    "attention": [
        ("rnn-base (general)", RNN, []),
        ("attention none", RNN, ["model.attention=none", NO_FEEDING]),
        ("attention dot", RNN, ["model.attention=dot"]),
        ("attention concat", RNN, ["model.attention=concat"]),
        ("attention bahdanau", RNN, ["model.attention=bahdanau", NO_FEEDING]),
    ],
    "input_feeding": [
        ("rnn-base (general)", RNN, []),
        ("input feeding off", RNN, ["model.input_feeding=false"]),
    ],
    "reversal": [
        ("attention none", RNN, ["model.attention=none", NO_FEEDING]),
        ("attention none, reversed", RNN, ["model.attention=none", NO_FEEDING, "model.reverse_source=true"]),
        ("rnn-base (general)", RNN, []),
        ("general, reversed", RNN, ["model.reverse_source=true"]),
    ],
    "encoder": [
        ("rnn-base (general)", RNN, []),
        ("unidirectional encoder", RNN, ["model.bidirectional=false"]),
        ("GRU", RNN, ["model.cell=gru"]),
    ],
    "sampling": [
        ("rnn-base (general)", RNN, []),
        ("scheduled sampling", RNN, ["training.scheduled_sampling={decay: linear, k: 1.0, c: 0.0005, "
                                     "min_ratio: 0.75}"]),
    ],
    "transformer": [
        ("transformer-base (sinusoidal, pre-norm)", TRANSFORMER, []),
        ("positions learned", TRANSFORMER, ["model.positional=learned"]),
        ("positions none", TRANSFORMER, ["model.positional=none"]),
        ("post-norm", TRANSFORMER, ["model.norm=post"]),
    ],
}
LENGTH_MODELS = [("attention none", RNN, ["model.attention=none", NO_FEEDING]),
                 (RNN_BASE, RNN, []), (TRANSFORMER_BASE, TRANSFORMER, [])]
LENGTH_BUCKETS = [(1, 8), (9, 11), (12, 14), (15, 18), (19, 100)]  # source words


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]).strip("-")


def train_command(name: str, config: Path, overrides: list[str], args: argparse.Namespace) -> list[str]:
    run = args.runs / slug(name)
    budget = [f"training.max_steps={args.updates}", "training.max_minutes=0", "training.max_epochs=1000",
              "training.early_stopping.patience=0", f"training.valid_every={max(1, args.updates // 4)}",
              "training.keep_last=1", "training.keep_best=1", f"training.out_dir={run}",
              f"training.num_threads={args.threads}"]
    resume = ["--resume"] if is_run_folder(run) and (run / "last").exists() else []
    return [sys.executable, "-m", "nmtkit.cli", "train", str(config),
            *[f"--set={o}" for o in [*data_overrides(args.data), *budget, *args.set, *overrides]], *resume]


def train_all(runs: list[tuple[str, Path, list[str]]], args: argparse.Namespace) -> None:
    """Train every run not finished yet, --jobs at a time (each in a process of its own, its log
    in RUNS/<name>.log): the budget is a number of updates, so runs sharing the cores is fair."""
    todo = {}
    for name, config, overrides in runs:
        run = args.runs / slug(name)
        last = run / "last" / "checkpoint.json"
        done = read_json(last)["step"] if last.is_file() else 0
        if slug(name) not in todo and done < args.updates:
            todo[slug(name)] = train_command(name, config, overrides, args)
    args.runs.mkdir(parents=True, exist_ok=True)
    pending, running = list(todo.items()), []
    while pending or running:
        while pending and len(running) < args.jobs:
            key, cmd = pending.pop(0)
            print(f"training {key}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            log = (args.runs / f"{key}.log").open("w")
            running.append((key, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            item[2].close()
            if item[1].returncode:
                sys.exit(f"training {item[0]} failed: see {args.runs / (item[0] + '.log')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"))
    p.add_argument("--updates", type=int, default=600)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--threads", type=int, default=2, help="threads per run")
    everything = [*GROUPS, "beam", "length"]
    p.add_argument("--group", nargs="+", choices=everything, default=everything)
    args = p.parse_args()
    print(machine_header())
    if not (args.data / "test2016.de").is_file():
        print(f"skipped: no Multi30k at {args.data} (give --data)")
        return
    sources = (args.data / "test2016.en").read_text(encoding="utf-8").splitlines()
    refs = (args.data / "test2016.de").read_text(encoding="utf-8").splitlines()
    scored: dict[str, tuple[float, float, float]] = {}
    minutes: dict[str, float] = {}
    last_valid: dict[str, float] = {}  # greedy valid BLEU at the last update
    hyps: dict[str, list[str]] = {}

    def run_and_score(name: str, config: Path, overrides: list[str]) -> Path:
        run = args.runs / slug(name)
        if name not in scored:
            hyps[name] = Translator.load(run / "last").translate(sources, beam=5)
            s = score(hyps[name], refs)
            scored[name] = (s.bleu, s.bleu_lowercase, s.chrf)
            log = load_log(run)
            minutes[name] = max(r["elapsed_s"] for r in log if "elapsed_s" in r) / 60
            last_valid[name] = validations(log)[-1]["bleu"]
        return run

    groups = [g for g in args.group if g in GROUPS]
    needed = [run for g in groups for run in GROUPS[g]]
    if "beam" in args.group:
        needed += [(RNN_BASE, RNN, []), (TRANSFORMER_BASE, TRANSFORMER, [])]
    if "length" in args.group:
        needed += LENGTH_MODELS
    train_all(needed, args)
    print(f"Multi30k En->De, {args.updates} updates per run, test2016, last checkpoint, beam 5\n")
    for group in [g for g in args.group if g in GROUPS]:
        for name, config, overrides in GROUPS[group]:
            run_and_score(name, config, overrides)
        print(f"\n**{group}**\n\n| variant | test BLEU | lowercased | chrF | valid BLEU (greedy), last | "
              "train minutes |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, _, _ in GROUPS[group]:
            b, lc, c = scored[name]
            print(f"| {name} | {b:.2f} | {lc:.2f} | {c:.2f} | {last_valid[name]:.1f} | {minutes[name]:.1f} |")
    if scored:
        plot_groups(scored, [g for g in args.group if g in GROUPS], args.runs / "ablations.png")

    if "beam" in args.group:
        print("\n**beam size and length penalty** (test2016 BLEU, cased)\n")
        print("| model | beam 1 | beam 5, lp 0 | beam 5, lp 1 | beam 10, lp 0 | beam 10, lp 1 |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, config in ((RNN_BASE, RNN), (TRANSFORMER_BASE, TRANSFORMER)):
            t = Translator.load(run_and_score(name, config, []) / "last")
            cells = [score(t.translate(sources, beam=b, length_penalty=a), refs).bleu
                     for b, a in ((1, 1.0), (5, 0.0), (5, 1.0), (10, 0.0), (10, 1.0))]
            print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")

    if "length" in args.group:
        for name, config, overrides in LENGTH_MODELS:
            run_and_score(name, config, overrides)
        by_length = {name: bleu_by_length(sources, hyps[name], refs) for name, _, _ in LENGTH_MODELS}
        print("\n**test BLEU by source length (words)**\n")
        print("| model | " + " | ".join(f"{a}-{b}" if b < 100 else f"{a}+" for a, b in LENGTH_BUCKETS) + " |")
        print("|---|" + "---:|" * len(LENGTH_BUCKETS))
        for name, values in by_length.items():
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        plot_lengths(by_length, sources, args.runs / "bleu-by-length.png")


def bleu_by_length(sources: list[str], hyps: list[str], refs: list[str]) -> list[float]:
    values = []
    for low, high in LENGTH_BUCKETS:
        idx = [i for i, s in enumerate(sources) if low <= len(s.split()) <= high]
        values.append(score([hyps[i] for i in idx], [refs[i] for i in idx]).bleu)
    return values


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_groups(scored: dict[str, tuple[float, float, float]], groups: list[str], out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 1.1 + 0.45 * sum(len(GROUPS[g]) for g in groups)),
                             gridspec_kw={"height_ratios": [len(GROUPS[g]) for g in groups]}, squeeze=False)
    for ax, group in zip(axes[:, 0], groups, strict=True):
        names = [n for n, _, _ in GROUPS[group]]
        ax.barh(range(len(names)), [scored[n][0] for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)), labels=names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(group, fontsize=9, loc="left")
        for i, n in enumerate(names):
            ax.text(scored[n][0] + 0.3, i, f"{scored[n][0]:.1f}", va="center", fontsize=7)
        ax.set_xlim(0, max(v[0] for v in scored.values()) * 1.12)
    axes[-1, 0].set_xlabel("test2016 BLEU (cased sacreBLEU, beam 5)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nplot: {out}")


def plot_lengths(by_length: dict[str, list[float]], sources: list[str], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    labels = [f"{a}-{b}" if b < 100 else f"{a}+" for a, b in LENGTH_BUCKETS]
    counts = [sum(a <= len(s.split()) <= b for s in sources) for a, b in LENGTH_BUCKETS]
    for name, values in by_length.items():
        ax.plot(range(len(values)), values, marker="o", label=name.split(" (")[0])
    ax.set_xticks(range(len(labels)), labels=[f"{lab}\n({n})" for lab, n in zip(labels, counts, strict=True)])
    ax.set_xlabel("source sentence length in words (sentences)")
    ax.set_ylabel("test2016 BLEU")
    ax.set_title("BLEU by sentence length (Bahdanau et al.'s figure, Multi30k)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
