"""Quality and speed of a trained Multi30k Transformer exported to CTranslate2, fp32 and int8.

    python benchmarks/bench_export.py [--checkpoint runs/multi30k-transformer/best]
        [--data ../shared/data/multi30k] [--beam 5] [--threads 1]

Exports the checkpoint twice with `nmtkit export --format ctranslate2` (float32, and
`--quantization int8`), then decodes test2016 (English -> German) four ways, each in a process of
its own (CTranslate2 and PyTorch each bring their own OpenMP; see bench_decoding.py):

    nmtkit fp32   Translator.load(checkpoint)
    nmtkit int8   Translator.load(checkpoint, quantize="int8")  (dynamic int8 linear layers)
    ct2 fp32      ctranslate2.Translator on the float32 export
    ct2 int8      ctranslate2.Translator on the int8 export

and prints cased sacreBLEU (13a) for each, the differences (the issue's target: int8 within 0.3
BLEU of fp32), how many translations equal nmtkit fp32's, and sentences/s (batches of --batch
sentences, tokenization included, after a warm-up).

Both engines search the same way only without a length penalty (the default,
--length-penalty 0): nmtkit's is GNMT's ((5 + len) / 6) ** alpha, CTranslate2's len ** alpha.
With 0 the two fp32 rows should agree translation for translation; the int8 rows then show what
quantization costs. Outputs are capped at --max-len pieces on both (not nmtkit's usual
1.5 * source + 10: CTranslate2 has one limit for a whole batch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nmtkit from this checkout

SYSTEMS = ("nmtkit fp32", "nmtkit int8", "ct2 fp32", "ct2 int8")


def decode_nmtkit(args: argparse.Namespace, sources: list[str]) -> list[str]:
    import torch

    from nmtkit.translator import Translator

    torch.set_num_threads(args.threads)
    translator = Translator.load(args.checkpoint, quantize="int8" if args.worker.endswith("int8") else None)

    def run(batch: list[str]) -> list[str]:
        return translator.translate(batch, beam=args.beam, length_penalty=args.length_penalty,
                                    max_len_a=0.0, max_len_b=args.max_len)

    return timed(run, sources, args)


def decode_ct2(args: argparse.Namespace, sources: list[str]) -> list[str]:
    """No PyTorch operation runs in this process (its OpenMP pool would slow CTranslate2's)."""
    import ctranslate2
    import sentencepiece as spm

    folder = Path(args.folder) / args.worker.split()[-1]
    src = spm.SentencePieceProcessor(model_file=str(folder / "source.spm"))
    tgt = spm.SentencePieceProcessor(model_file=str(folder / "target.spm"))
    translator = ctranslate2.Translator(str(folder), device="cpu", compute_type="default",
                                        intra_threads=args.threads, inter_threads=1)

    def run(batch: list[str]) -> list[str]:
        results = translator.translate_batch(
            [src.encode(s, out_type=str) for s in batch], beam_size=args.beam,
            length_penalty=args.length_penalty, max_decoding_length=args.max_len,
            max_batch_size=len(batch), disable_unk=True)
        return [tgt.decode(r.hypotheses[0]) for r in results]

    return timed(run, sources, args)


def timed(run, sources: list[str], args: argparse.Namespace) -> list[str]:
    """Translate `sources` in batches of args.batch after a warm-up batch; print the seconds."""
    run(sources[: args.batch])
    start = time.perf_counter()
    out = [t for i in range(0, len(sources), args.batch) for t in run(sources[i: i + args.batch])]
    print(json.dumps(time.perf_counter() - start), flush=True)
    return out


def worker(args: argparse.Namespace) -> None:
    sources = Path(args.sources).read_text(encoding="utf-8").splitlines()
    decode = decode_ct2 if args.worker.startswith("ct2") else decode_nmtkit
    hyps = decode(args, sources)
    Path(args.hyp).write_text("\n".join(hyps) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/multi30k-transformer/best")
    p.add_argument("--data", default="../shared/data/multi30k", help="holds test2016.en, test2016.de")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="0: the two engines search alike (see above)")
    p.add_argument("--batch", type=int, default=64, help="sentences per call")
    p.add_argument("--max-len", type=int, default=128,
                   help="the most output pieces, on both engines (CTranslate2 has one limit per batch)")
    p.add_argument("--sentences", type=int, default=0, help="the first N test sentences (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--sources", help=argparse.SUPPRESS)
    p.add_argument("--hyp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # its stdout is the protocol: the seconds, one line
        worker(args)
        return

    from nmtkit.checkpoint import resolve_checkpoint
    from nmtkit.cpu import machine_header
    from nmtkit.errors import NMTKitError
    from nmtkit.export import export_ctranslate2
    from nmtkit.metrics import bleu_score

    print(machine_header())
    src_file, ref_file = Path(args.data) / "test2016.en", Path(args.data) / "test2016.de"
    missing = [str(f) for f in (src_file, ref_file) if not f.is_file()]
    if missing or not Path(args.checkpoint).exists():
        sys.exit(f"bench_export: missing {', '.join(missing) or args.checkpoint}: train "
                 "configs/multi30k-transformer.yaml first, with ../shared/data/multi30k present")
    try:
        checkpoint = resolve_checkpoint(Path(args.checkpoint))
    except NMTKitError as err:
        sys.exit(f"bench_export: {err}")
    sources = src_file.read_text(encoding="utf-8").splitlines()
    references = ref_file.read_text(encoding="utf-8").splitlines()
    if args.sentences:
        sources, references = sources[: args.sentences], references[: args.sentences]
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name)
    (folder / "sources.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    export_ctranslate2(checkpoint, folder / "fp32")
    export_ctranslate2(checkpoint, folder / "int8", quantization="int8")

    import ctranslate2
    import torch

    hyps: dict[str, list[str]] = {}
    speed: dict[str, float] = {}
    for name in SYSTEMS:
        hyp = folder / f"{name.replace(' ', '-')}.hyp"
        forwarded = ["--checkpoint", str(checkpoint), "--beam", str(args.beam), "--length-penalty",
                     str(args.length_penalty), "--batch", str(args.batch), "--max-len", str(args.max_len),
                     "--threads", str(args.threads)]
        run = subprocess.run([sys.executable, __file__, *forwarded, "--worker", name, "--folder",
                              str(folder), "--sources", str(folder / "sources.txt"), "--hyp", str(hyp)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"bench_export: the {name} worker failed:\n{run.stderr[-3000:]}")
        seconds = json.loads(run.stdout.strip().splitlines()[-1])
        hyps[name] = hyp.read_text(encoding="utf-8").splitlines()
        speed[name] = len(sources) / seconds
    tmp.cleanup()

    bleu = {name: bleu_score(hyps[name], references) for name in SYSTEMS}
    print(f"\n{checkpoint}; test2016 en->de, {len(sources)} sentences; beam {args.beam}, length "
          f"penalty {args.length_penalty}; batches of {args.batch}; {args.threads} thread(s); "
          f"PyTorch {torch.__version__}, CTranslate2 {ctranslate2.__version__}\n")
    print("| system | BLEU | int8 - fp32 (same engine) | - nmtkit fp32 | translations = nmtkit fp32's "
          "| sentences/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in SYSTEMS:
        engine, dtype = name.split()
        vs_fp32 = f"{bleu[name] - bleu[f'{engine} fp32']:+.2f}" if dtype == "int8" else ""
        same = sum(a == b for a, b in zip(hyps[name], hyps["nmtkit fp32"], strict=True))
        print(f"| {name} | {bleu[name]:.2f} | {vs_fp32} | {bleu[name] - bleu['nmtkit fp32']:+.2f} | "
              f"{same}/{len(sources)} | {speed[name]:.1f} |")
    for engine in ("nmtkit", "ct2"):
        drop = bleu[f"{engine} fp32"] - bleu[f"{engine} int8"]
        print(f"\n{engine} int8 within 0.3 BLEU of fp32: {'yes' if drop <= 0.3 else 'NO'} "
              f"(fp32 - int8 = {drop:+.2f})", end="")
    print()


if __name__ == "__main__":
    main()
