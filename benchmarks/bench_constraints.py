"""Lexically constrained beam search, after Post & Vilar (2018): constraints drawn from the reference.

For each sentence of a test set, one and then two phrases of 1 to 3 words are drawn from its
reference (a fixed seed; trailing punctuation dropped; two phrases do not overlap), and the test
set is translated without constraints, with the first phrase, and with both (beam 5). The table
shows BLEU, the term-usage rate (the share of constraints that appear in the output as whole
words) and sentences/s at batch 64 and batch 1. With --hf (run under the peers venv, which has
transformers), Hugging Face's constrained beam search (`generate(force_words_ids=...)`) on a
MarianMTModel of the same shape with random weights decodes the same ids, for speed.

    python benchmarks/bench_constraints.py --checkpoint runs/multi30k-transformer \\
        --data ../shared/data/multi30k
    .venv-peers/hf-constraints/bin/python benchmarks/bench_constraints.py --data ../shared/data/multi30k --hf

Without --checkpoint, a model of configs/multi30k-transformer.yaml's shape with random weights
(and a vocabulary learnt from the training data) stands in: its BLEU means nothing, its speed
and term usage do. A random model rarely ends a sentence, so every output runs to the length
limit: --max-len-b caps it (outputs of at most 1.0 * source length + b pieces).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # nmtkit from this checkout


def random_checkpoint(data: Path, folder: Path) -> Path:
    """Random weights of the shipped Multi30k Transformer's shape, with its vocabulary."""
    from nmtkit.checkpoint import save_checkpoint
    from nmtkit.config import load_config
    from nmtkit.data import prepare
    from nmtkit.model import build_model

    cfg = load_config(REPO / "configs/multi30k-transformer.yaml", [
        f"data.train_src={data / 'train.en'}", f"data.train_tgt={data / 'train.de'}",
        f"data.valid_src={data / 'valid.en'}", f"data.valid_tgt={data / 'valid.de'}",
        f"data.test_src={data / 'test2016.en'}", f"data.test_tgt={data / 'test2016.de'}",
        f"data.out_dir={folder / 'bin'}"])
    prepared = prepare(cfg.data, cfg.vocab, log=lambda _: None)
    model = build_model(cfg.model, len(prepared.src_tokenizer), len(prepared.tgt_tokenizer))
    return save_checkpoint(folder / "ckpt", model, cfg, prepared.src_tokenizer, prepared.tgt_tokenizer,
                           {"step": 0})


def draw_phrases(reference: str, rng: random.Random) -> list[str]:
    """Two non-overlapping phrases of 1 to 3 words of the reference (fewer for short ones)."""
    words = [w.strip(".,;:!?\"'()") for w in reference.split()]
    words = [w for w in words if w]
    phrases: list[str] = []
    used: set[int] = set()
    for _ in range(2):
        for _attempt in range(20):
            n = rng.randint(1, 3)
            if len(words) < n:
                continue
            start = rng.randrange(len(words) - n + 1)
            span = set(range(start, start + n))
            if span & used:
                continue
            used |= span
            phrases.append(" ".join(words[start : start + n]))
            break
    return phrases


def uses(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: random weights)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/multi30k")
    p.add_argument("--sentences", type=int, default=128, help="the first N of test2016 (BLEU, batch 64)")
    p.add_argument("--single", type=int, default=16, help="of which this many at batch 1")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hf", action="store_true", help="also Hugging Face force_words_ids (peers venv)")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the random model here, reused by the next run (default: a temporary folder)")
    args = p.parse_args()

    import sacrebleu
    import torch

    from nmtkit.checkpoint import resolve_checkpoint
    from nmtkit.translator import Translator
    from nmtkit.vocabulary import UNK_ID

    torch.set_num_threads(args.threads)
    src = (args.data / "test2016.en").read_text(encoding="utf-8").splitlines()[: args.sentences]
    ref = (args.data / "test2016.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.checkpoint:
            path = resolve_checkpoint(args.checkpoint)
        else:
            path = work / "ckpt" if (work / "ckpt").is_dir() else random_checkpoint(args.data, work)
        t = Translator.load(path)
    rng = random.Random(args.seed)
    spelled = lambda phrase: UNK_ID not in t.tgt_tok.encode(phrase)  # noqa: E731
    drawn = [[x for x in draw_phrases(r, rng) if spelled(x)] for r in ref]
    settings = {"none": [[] for _ in src], "one": [d[:1] for d in drawn], "two": [d[:2] for d in drawn]}
    options = {"beam": args.beam, "max_len_a": 1.0, "max_len_b": args.max_len_b, "batch_tokens": 10**9}

    def run(constraints: list[list[str]], batch: int, n: int) -> tuple[list[str], float]:
        out: list[str] = []
        start = time.perf_counter()
        for i in range(0, n, batch):
            out += t.translate(src[i : i + batch], constraints=constraints[i : i + batch], **options)
        return out, n / (time.perf_counter() - start)

    rows = []
    for name, constraints in settings.items():
        out, speed64 = run(constraints, 64, len(src))
        _, speed1 = run(constraints, 1, args.single)
        wanted = sum(len(c) for c in constraints)
        used = sum(uses(o, c) for o, cs in zip(out, constraints, strict=True) for c in cs)
        bleu = sacrebleu.corpus_bleu(out, [ref]).score
        rows.append((name, bleu, f"{100 * used / wanted:.1f}%" if wanted else "-", speed64, speed1))
    hf = hf_speeds(t, src, settings, args) if args.hf else {}

    model = "trained" if args.checkpoint else "random weights (BLEU meaningless)"
    print(f"\ntest2016, first {len(src)} sentences; beam {args.beam}; {model}; {args.threads} threads; "
          f"batch 1 on the first {args.single}\n")
    print("| constraints | BLEU | term usage | sent/s batch 64 | sent/s batch 1 "
          "| HF force_words_ids batch 64 |")
    print("|---|---|---|---|---|---|")
    for name, bleu, usage, s64, s1 in rows:
        hf_cell = f"{hf[name]:.1f}" if name in hf else "-"
        print(f"| {name} | {bleu:.2f} | {usage} | {s64:.1f} | {s1:.1f} | {hf_cell} |")
    base = rows[0][3]
    print("\nconstrained / unconstrained at batch 64: " +
          ", ".join(f"{name} {s64 / base:.2f}x" for name, _, _, s64, _ in rows[1:]))
    if hf:
        print("nmtkit / HF constrained at batch 64: " +
              ", ".join(f"{name} {s64 / hf[name]:.2f}x" for name, _, _, s64, _ in rows if name in hf))


def hf_speeds(t, src: list[str], settings: dict, args: argparse.Namespace) -> dict[str, float]:
    """Sentences/s of Hugging Face's (constrained) beam search on a MarianMTModel of the same
    shape (random weights), on the same source ids and constraint ids, at batch 64."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    cfg = t.ckpt.config.model
    vocab = len(t.tgt_tok)
    model = MarianMTModel(MarianConfig(
        vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ff_size, decoder_ffn_dim=cfg.ff_size,
        activation_function="relu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=512, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=3, decoder_start_token_id=2,
        forced_eos_token_id=3)).eval()
    ids = [t.src_tok.encode(s) + [3] for s in src]
    speeds = {}
    for name, constraints in settings.items():
        start = time.perf_counter()
        for i in range(0, len(src), 64):
            chunk = ids[i : i + 64]
            batch = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for row, x in enumerate(chunk):
                batch[row, : len(x)] = torch.tensor(x)
            # HF takes one list of constraints for the whole batch: each sentence's own cannot be
            # given, so the batch gets the first sentence's (as many constraints, for speed)
            force = [t.tgt_tok.encode(c) for c in constraints[i]] or None
            with torch.inference_mode():
                model.generate(input_ids=batch, attention_mask=batch != 0, num_beams=args.beam,
                               max_new_tokens=max(map(len, chunk)) + args.max_len_b,
                               force_words_ids=force, do_sample=False)
        speeds[name] = len(src) / (time.perf_counter() - start)
    return speeds


if __name__ == "__main__":
    main()
