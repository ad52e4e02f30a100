"""The Transformer's blocks arranged two ways, on the same data, vocabulary and budget.

    python benchmarks/decoder_only.py translation --data ../shared/data/multi30k
    python benchmarks/decoder_only.py lm --data ../shared/data/multi30k

translation: Multi30k En->De, the encoder-decoder Transformer (3+3 layers) against the
decoder-only model (7 layers: the same parameter count) with a causal mask and with the
prefix-LM mask. Each trains for --updates updates on the same token batches (one joint BPE
vocabulary, tied embeddings), then decodes test2016 with beam 5 from its best checkpoint.

lm: language models on the German side, positional sinusoidal / learned / none, at 2 and 6
layers (the seed note's claim, from Irie et al. 2019: a deep autoregressive Transformer needs no
positional encoding). Validation perplexity after --updates updates.

Runs go under --runs (default runs/decoder-only); a finished run is reused, so the tables can
be printed again without training. Prints markdown tables and writes a plot beside the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nmtkit.config import config_from_dict
from nmtkit.cpu import machine_header
from nmtkit.metrics import score
from nmtkit.training import is_run_folder, load_log, train
from nmtkit.translator import Translator

D_MODEL, HEADS, FF = 128, 4, 512
TRANSLATION = {  # name: model section; 3+3 layers and 7 decoder-only layers hold equal weights
    "encoder-decoder": {"type": "transformer", "encoder_layers": 3, "decoder_layers": 3,
                        "share_embeddings": True},
    "decoder-only (causal)": {"type": "decoder_only", "layers": 7},
    "decoder-only (prefix-LM)": {"type": "decoder_only", "layers": 7, "prefix_lm": True},
}


def _config(data: dict[str, Any], model: dict[str, Any], out: Path, updates: int, valid_bleu: bool,
            threads: int) -> Any:
    return config_from_dict({
        "data": {**data, "max_len": 80},
        "vocab": {"type": "bpe", "size": 8000, "joint": True},
        "model": {**model, "d_model": D_MODEL, "heads": HEADS, "ff_size": FF, "dropout": 0.1},
        "training": {"out_dir": str(out), "max_steps": updates, "max_epochs": 1000, "max_tokens": 4096,
                     "lr": 0.002, "schedule": "noam", "warmup_steps": max(1, updates // 5),
                     "label_smoothing": 0.1, "valid_every": max(1, updates // 10),
                     "valid_bleu": valid_bleu, "keep_last": 1, "num_threads": threads, "seed": 1},
        "decoding": {"beam": 5},
    })


def _train(cfg: Any) -> Path:
    out = Path(cfg.training.out_dir)
    return train(cfg, resume="auto" if is_run_folder(out) else None)


def _params(translator: Translator) -> int:
    """Distinct weights (a tied output layer counts once)."""
    return sum(p.numel() for p in translator.members[0].parameters())


def _train_speed(run: Path) -> float:
    """Median target tokens/s over the training log (the first window warms up)."""
    rows = [r["tokens_per_s"] for r in load_log(run) if r["type"] == "train"]
    return statistics.median(rows[1:] or rows) if rows else float("nan")


def translation(args: argparse.Namespace) -> None:
    d = Path(args.data)
    data = {"train_src": str(d / "train.en"), "train_tgt": str(d / "train.de"),
            "valid_src": str(d / "valid.en"), "valid_tgt": str(d / "valid.de"),
            "out_dir": str(Path(args.runs) / "data-en-de")}
    sources = (d / "test2016.en").read_text(encoding="utf-8").splitlines()
    references = (d / "test2016.de").read_text(encoding="utf-8").splitlines()
    rows, curves = [], []
    for name, model in TRANSLATION.items():
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        cfg = _config(data, model, Path(args.runs) / slug, args.updates, True, args.threads)
        run = _train(cfg)
        translator = Translator.load(run / "best")
        start = time.perf_counter()
        hyps = translator.translate(sources, beam=5)
        seconds = time.perf_counter() - start
        s = score(hyps, references)
        log = load_log(run)
        minutes = max(r["elapsed_s"] for r in log if "elapsed_s" in r) / 60
        rows.append(f"| {name} | {_params(translator) / 1e6:.2f} M | {s.bleu:.2f} | {s.chrf:.2f} | "
                    f"{_train_speed(run):,.0f} | {minutes:.0f} | {len(sources) / seconds:.1f} |")
        curves += [{**r, "run": name} for r in log if r["type"] == "valid"]
    print(f"Multi30k En->De, {args.updates} updates of <= 4096 tokens each, d_model {D_MODEL}, "
          f"{args.threads} threads; test2016 with beam 5 from the best checkpoint (valid BLEU)\n")
    print("| model | parameters | BLEU | chrF | train target tokens/s | train minutes | "
          "decode sentences/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    _plot(curves, "bleu", Path(args.runs) / "translation.png", "valid BLEU (greedy) by update")


def lm(args: argparse.Namespace) -> None:
    d = Path(args.data)
    data = {"train": str(d / "train.de"), "valid": str(d / "valid.de"),
            "out_dir": str(Path(args.runs) / "data-de")}
    table: dict[tuple[str, int], float] = {}
    curves = []
    for layers in (2, 6):
        for positional in ("sinusoidal", "learned", "none"):
            model = {"type": "decoder_only", "layers": layers, "positional": positional}
            cfg = _config(data, model, Path(args.runs) / f"lm-{positional}-{layers}", args.updates, False,
                          args.threads)
            run = _train(cfg)
            valid = [r for r in load_log(run) if r["type"] == "valid"]
            table[positional, layers] = min(r["ppl"] for r in valid)
            curves += [{**r, "run": f"{positional}, {layers} layers"} for r in valid]
    print(f"German side of Multi30k, {args.updates} updates of <= 4096 tokens each, d_model {D_MODEL}; "
          "best validation perplexity (BPE 8000 subwords)\n")
    print("| positional | 2 layers | 6 layers |")
    print("|---|---:|---:|")
    for positional in ("sinusoidal", "learned", "none"):
        print(f"| {positional} | {table[positional, 2]:.2f} | {table[positional, 6]:.2f} |")
    _plot(curves, "ppl", Path(args.runs) / "lm-positions.png", "valid perplexity by update")


def _plot(rows: list[dict[str, Any]], key: str, out: Path, title: str) -> None:
    """One line per run: the valid records' `key` by update."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["run"] for r in rows):
        points = [(r["step"], r[key]) for r in rows if r["run"] == name]
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set_xlabel("update")
    ax.set_ylabel(key)
    if key == "ppl":
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"\nplot: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["translation", "lm"])
    p.add_argument("--data", default="../shared/data/multi30k", help="a Multi30k folder")
    p.add_argument("--runs", default="runs/decoder-only")
    p.add_argument("--updates", type=int, default=2500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(machine_header())
    if not (Path(args.data) / "train.de").is_file():
        sys.exit(f"{args.data}: no Multi30k here (train.de); pass --data")
    torch.set_num_threads(args.threads)
    (translation if args.experiment == "translation" else lm)(args)


if __name__ == "__main__":
    main()
