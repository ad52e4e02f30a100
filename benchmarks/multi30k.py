"""Multi30k English->German results of shipped configs: train, then score test2016 the ways papers
do, with the time to quality and the memory of the whole run.

    python benchmarks/multi30k.py configs/multi30k-transformer.yaml configs/multi30k-rnn.yaml \
        --data ../shared/data/multi30k --precision fp32 bf16
    python benchmarks/multi30k.py configs/multi30k-transformer-tiny.yaml --average 10 --tune

Each config (with `--set` overrides, if any) trains in a process of its own, per precision,
into RUNS/<config>-<precision>; a finished run is reused. Then, on test2016: the best checkpoint
(by valid BLEU), or with --average N the mean of the last N checkpoints (`nmtkit average`);
with --tune the beam size and length penalty are chosen on the valid set (never on test).
Prints one markdown row per run: updates and minutes, the wall time until valid BLEU first
reached 30, peak resident memory over the run (from log.jsonl), and test2016 cased sacreBLEU,
lowercased BLEU (sacrebleu --lowercase, 13a: what papers report) and chrF. Writes
RUNS/valid-bleu.png: valid BLEU against wall-clock minutes for every run, and each run's test
translations to RUNS/<run>-{best,avgN}.test2016.hyp (for tokenized_bleu.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from time_to_quality import first_reaching, plot  # beside this script

from nmtkit.checkpoint import average_checkpoints, read_json
from nmtkit.cpu import machine_header
from nmtkit.metrics import bleu_score, score
from nmtkit.training import is_run_folder, list_checkpoints, load_log
from nmtkit.translator import Translator

BEAMS, PENALTIES = (5, 10), (0.6, 0.8, 1.0, 1.2, 1.4)


def data_overrides(data: Path) -> list[str]:
    files = {"train": "train", "valid": "valid", "test": "test2016"}
    return [f"data.{split}_{side}={data / f'{name}.{lang}'}" for split, name in files.items()
            for side, lang in (("src", "en"), ("tgt", "de"))]


def run_training(config: Path, out: Path, precision: str, overrides: list[str], data: Path) -> None:
    if is_run_folder(out) and (out / "last").exists():
        resume = ["--resume"]  # a finished run is a no-op
    else:
        resume = []
    cmd = [sys.executable, "-m", "nmtkit.cli", "train", str(config), f"--set=training.out_dir={out}",
           f"--set=training.precision={precision}", *[f"--set={o}" for o in data_overrides(data)],
           *[f"--set={o}" for o in overrides], *resume]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def time_to(log: list[dict[str, Any]], bleu: float) -> str:
    hit = first_reaching(log, bleu)
    return f"{hit['elapsed_s'] / 60:.1f} min (update {hit['step']})" if hit else "not reached"


def evaluate(run: Path, average: int, tune: bool, data: Path) -> tuple[str, Any]:
    model = run / "best"
    if average:
        model = run.parent / f"{run.name}-avg{average}"
        last = list_checkpoints(run)[-average:]
        made = model / "checkpoint.json"
        if not made.is_file() or read_json(made).get("averaged_from") != [str(c) for c in last]:
            average_checkpoints(last, model)  # none yet, or made from other checkpoints: stale
    t = Translator.load(model)
    beam, alpha = t.decoding.beam, t.decoding.length_penalty
    if tune:
        sources = (data / "valid.en").read_text(encoding="utf-8").splitlines()
        refs = (data / "valid.de").read_text(encoding="utf-8").splitlines()
        tried = {(b, a): bleu_score(t.translate(sources, beam=b, length_penalty=a), refs)
                 for b in BEAMS for a in PENALTIES}
        beam, alpha = max(tried, key=lambda k: tried[k])
    sources = (data / "test2016.en").read_text(encoding="utf-8").splitlines()
    refs = (data / "test2016.de").read_text(encoding="utf-8").splitlines()
    hyps = t.translate(sources, beam=beam, length_penalty=alpha)
    out = run.parent / f"{run.name}-{f'avg{average}' if average else 'best'}.test2016.hyp"
    out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    s = score(hyps, refs)
    what = f"{'avg last ' + str(average) if average else 'best'}, beam {beam}, lp {alpha:g}"
    return what, s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    p.add_argument("--runs", type=Path, default=Path("runs/multi30k"))
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--average", type=int, default=0, help="average the last N checkpoints")
    p.add_argument("--tune", action="store_true", help="choose beam and length penalty on valid")
    p.add_argument("--no-train", action="store_true", help="only score runs that exist")
    args = p.parse_args()
    print(machine_header())
    if not (args.data / "test2016.de").is_file():
        print(f"skipped: no Multi30k at {args.data} (give --data)")
        return
    rows, curves = [], {}
    for config in args.configs:
        for precision in args.precision:
            name = f"{config.stem}-{precision}"
            run = args.runs / name
            if not args.no_train:
                run_training(config, run, precision, args.set, args.data)
            log = load_log(run)
            trains = [r for r in log if r["type"] == "train"]
            peak = max((r.get("peak_rss_gb", 0) for r in trains), default=0)
            rss = [r["rss_gb"] for r in trains if "rss_gb" in r]
            what, s = evaluate(run, args.average, args.tune, args.data)
            minutes = max(r["elapsed_s"] for r in log if "elapsed_s" in r) / 60
            rows.append(f"| {name} | {max(r['step'] for r in log)} | {minutes:.0f} | {time_to(log, 30)} | "
                        f"{peak:.2f} | {min(rss, default=0):.2f}-{max(rss, default=0):.2f} | {what} | "
                        f"{s.bleu:.2f} | **{s.bleu_lowercase:.2f}** | {s.chrf:.2f} |")
            curves[name] = log
    print(f"\n{s.bleu_signature}\n{s.bleu_lowercase_signature}\n{s.chrf_signature}\n")
    print("| run | updates | minutes | valid BLEU 30 after | peak RSS GB | RSS GB over the run | model, "
          "decoding | test BLEU | lowercased | chrF |")
    print("|---|---:|---:|---|---:|---|---|---:|---:|---:|")
    print("\n".join(rows))
    plot(curves, args.runs / "valid-bleu.png")


if __name__ == "__main__":
    main()
