"""`nmtkit demo`: the whole path on the built-in numbers corpus, in a few minutes on a CPU."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from nmtkit.config import load_config
from nmtkit.democorpus import make_demo_corpus
from nmtkit.errors import NMTKitError
from nmtkit.metrics import score
from nmtkit.plotting import plot_attention
from nmtkit.training import is_run_folder, train
from nmtkit.translator import Translator

CONFIGS = {"rnn": Path("configs/demo.yaml"), "transformer": Path("configs/demo-transformer.yaml")}


def run_demo(model: str = "rnn", direction: str = "ko-en", overrides: list[str] | None = None) -> float:
    """Returns the test BLEU."""
    config_path = CONFIGS[model]
    if not config_path.is_file():
        raise NMTKitError(f"{config_path} not found: run the demo from the nmtkit repository root")
    start = time.monotonic()
    corpus_dir = Path("demo-data/corpus")
    src, tgt = direction.split("-")
    make_demo_corpus(corpus_dir)
    print(f"demo corpus: {corpus_dir} (numbers as words, {direction})")
    paths = {
        f"data.{split}_{side}={corpus_dir / f'{split}.{lang}'}"
        for split in ("train", "valid", "test")
        for side, lang in (("src", src), ("tgt", tgt))
    }
    suffix = f"{model}-{direction}"
    # Korean is written with few spaces (1-2 words per number): BLEU over characters there
    tokenize = "char" if tgt == "ko" else "13a"
    cfg = load_config(config_path, [*sorted(paths), f"data.out_dir=demo-data/bin-{direction}",
                                    f"training.out_dir=runs/demo-{suffix}",
                                    f"training.bleu_tokenize={tokenize}", *(overrides or [])])
    run_dir = Path(cfg.training.out_dir)
    if run_dir.exists():  # the demo always trains from scratch: an earlier demo run goes
        if not run_dir.is_dir() or not (is_run_folder(run_dir) or not any(run_dir.iterdir())):
            raise NMTKitError(f"{run_dir} exists and is not a run folder: move it to run the demo")
        shutil.rmtree(run_dir)
    train(cfg)

    translator = Translator.load(run_dir / "best")
    src_lines = (corpus_dir / f"test.{src}").read_text(encoding="utf-8").splitlines()
    ref_lines = (corpus_dir / f"test.{tgt}").read_text(encoding="utf-8").splitlines()
    hyps = translator.translate(src_lines)
    print("\nsample translations (test split):")
    for s, h, r in list(zip(src_lines, hyps, ref_lines, strict=True))[:5]:
        mark = "ok " if h == r else "ERR"
        print(f"  [{mark}] {s}\n        -> {h}")
    scores = score(hyps, ref_lines, cfg.training.bleu_tokenize)
    exact = sum(h == r for h, r in zip(hyps, ref_lines, strict=True)) / len(ref_lines)
    print(f"\ntest set ({len(src_lines)} sentences): exact match {exact:.1%}")
    print(scores)
    sentence = max(src_lines[:20], key=len)  # a long one shows the reordering best
    (details,) = translator.translate([sentence], return_details=True)
    if details.attention is not None:
        out = plot_attention(details.attention, details.source_tokens,
                             details.tokens + ["</s>"], run_dir / "attention.png",
                             title=f"{sentence} -> {details.text}")
        print(f"attention heatmap: {out}")
    print(f"demo finished in {(time.monotonic() - start) / 60:.1f} minutes")
    return scores.bleu
