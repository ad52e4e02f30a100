"""`nmtkit demo`: the whole path on the built-in numbers corpus, in a few minutes on a CPU."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from nmtkit.checkpoint import read_json
from nmtkit.config import apply_overrides, load_config, validated
from nmtkit.democorpus import make_demo_corpus
from nmtkit.errors import NMTKitError
from nmtkit.files import lock_holder, write_text_atomic
from nmtkit.metrics import score
from nmtkit.plotting import plot_attention, plot_patch_attention
from nmtkit.training import RUN_NAMES, is_run_folder, list_checkpoints, train
from nmtkit.translator import Translator

CONFIGS = {"rnn": Path("configs/demo.yaml"), "transformer": Path("configs/demo-transformer.yaml")}


def _is_demo_run(run_dir: Path, corpus_dir: Path) -> bool:
    """An empty folder, or a run the demo trained (on its corpus) holding nothing but what
    training and the demo write: only that may be replaced."""
    if not run_dir.is_dir() or run_dir.is_symlink():
        return False
    names = [p.name for p in run_dir.iterdir()]
    if not names:
        return True
    if not is_run_folder(run_dir) or not all(RUN_NAMES.match(n) for n in names):
        return False
    for checkpoint in list_checkpoints(run_dir):
        try:
            train_src = read_json(checkpoint / "checkpoint.json")["config"]["data"]["train_src"]
        except (NMTKitError, KeyError, TypeError):
            return False
        if not isinstance(train_src, str) or Path(train_src).parent != corpus_dir:
            return False
    return True


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
        holder = lock_holder(run_dir)
        if holder:
            raise NMTKitError(f"{run_dir} is being trained by another process ({holder}): wait "
                              "for it to end, or choose --set training.out_dir=NEW")
        if not _is_demo_run(run_dir, corpus_dir):
            raise NMTKitError(f"{run_dir} exists and is not an earlier demo run (only those are "
                              "replaced): move it, or choose --set training.out_dir=NEW")
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


VIT_OUTPUTS = {"model.safetensors", "config.json", "cls-attention.png"}


def run_vit_demo(overrides: list[str] | None = None, out_dir: Path = Path("runs/demo-vit")) -> float:
    """The Vision Transformer on scikit-learn's 8x8 digits: train, test, compare with logistic
    regression, draw the [CLS] attention. `overrides` are model.KEY=VALUE / training.KEY=VALUE.
    Returns the test accuracy."""
    from safetensors.torch import save_model
    from tqdm import tqdm

    from nmtkit import vit

    start = time.monotonic()
    cfg = validated(vit.ViTDemoConfig, apply_overrides({}, overrides or []), "--set")
    if out_dir.exists() and (not out_dir.is_dir() or {p.name for p in out_dir.iterdir()} - VIT_OUTPUTS):
        raise NMTKitError(f"{out_dir} exists and holds more than an earlier ViT demo: "
                          "move it to run the demo")
    split = vit.digits()
    print(f"digits: {len(split.train_labels)} training and {len(split.test_labels)} test images, 8x8 "
          f"(scikit-learn), {cfg.model.patches} patches of {cfg.model.patch_size}x{cfg.model.patch_size}")
    with tqdm(total=cfg.training.epochs, desc="ViT", unit="epoch") as bar:
        def report(epoch: int, loss: float, seconds: float) -> None:
            speed = epoch * len(split.train_labels) / seconds
            bar.set_postfix(loss=f"{loss:.3f}", images_per_s=f"{speed:.0f}")
            bar.update()

        model = vit.train_vit(cfg.model, split, cfg.training, report)
    accuracy = vit.accuracy(model, split.test_images, split.test_labels)
    baseline = vit.logistic_regression_accuracy(split)
    params = sum(p.numel() for p in model.parameters())
    print(f"test accuracy: ViT {accuracy:.2%} ({params:,} parameters), "
          f"logistic regression {baseline:.2%} (same split)")

    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out_dir / "model.safetensors"))
    write_text_atomic(out_dir / "config.json", json.dumps(
        {**cfg.model_dump(), "test_accuracy": accuracy, "logistic_regression_accuracy": baseline},
        indent=2) + "\n")
    shown = split.test_images[:8]
    with torch.no_grad():
        predicted = model(shown)[0].argmax(-1)
    titles = [f"{int(p)} ({'ok' if p == y else 'label ' + str(int(y))})"
              for p, y in zip(predicted, split.test_labels[:8], strict=True)]
    maps = {"last layer": model.cls_attention(shown, -1).numpy(),
            "rollout": model.cls_attention(shown).numpy()}
    picture = plot_patch_attention(shown[:, 0].numpy(), maps, titles, out_dir / "cls-attention.png")
    print(f"[CLS] attention over the patches (last layer and rollout, heads averaged): {picture}")
    print(f"demo finished in {(time.monotonic() - start) / 60:.1f} minutes")
    return accuracy
