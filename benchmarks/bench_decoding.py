"""Decoding speed on CPU: nmtkit beside Hugging Face transformers and CTranslate2.

All systems decode the same shape of Transformer (by default configs/multi30k-transformer.yaml:
d_model 256, 4 heads, ff 1024, 3+3 layers, joint vocabulary of 8000, tied embeddings) with
random weights, on the same random source sentences, for the same number of decoder steps:

    nmtkit        build_model(config), greedy_search / beam_search (and --quantize int8)
    transformers  a MarianMTModel built offline from a MarianConfig of that shape, generate()
                  (and int8: the same dynamic int8 linear layers as nmtkit's, quantize_int8)
    ctranslate2   that Marian model converted with CTranslate2's converter (float32 and int8)
    nmtkit->ct2   nmtkit's own model exported with `nmtkit export --format ctranslate2`'s code
                  (nmtkit.export.build_spec), decoded by CTranslate2 (float32)

Output length is forced so that no system wins by stopping early: every sentence takes exactly
--steps decoder steps (EOS suppressed before, and the last step forced). Translations are not
compared (the weights are random); shapes and output lengths are. Every system gets the same
number of threads and runs in a worker process of its own, so that no system's thread pool
(CTranslate2 and PyTorch each bring their own copy of OpenMP) or allocator state slows another; this
process sends the same batches to the workers in turn, one at a time, with a pause between,
and the table shows medians. nmtkit decodes as its Translator does on the CPU (keep_freed_memory
on, linear layers packed for oneDNN where cpu.packing_pays says it pays).

    .venv-peers/hf/bin/python benchmarks/bench_decoding.py   # peers installed there, see README

A peer that is not installed is skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nmtkit from this checkout

from nmtkit.config import TransformerConfig  # noqa: E402
from nmtkit.cpu import keep_freed_memory, machine_header, packing_pays  # noqa: E402
from nmtkit.data import collate_source  # noqa: E402
from nmtkit.model import build_model  # noqa: E402
from nmtkit.quantize import pack_linears, quantize_int8  # noqa: E402
from nmtkit.search import beam_search, greedy_search  # noqa: E402

Decode = Callable[[list[list[int]], int], list[int]]  # (sentences, beam) -> output lengths


def model_shape(path: str, vocab: int | None) -> tuple[TransformerConfig, int]:
    """The Transformer config and joint vocabulary size, from the YAML config if it exists."""
    raw: dict = {}
    if Path(path).is_file():
        import yaml

        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    defaults = {"d_model": 256, "heads": 4, "ff_size": 1024, "encoder_layers": 3, "decoder_layers": 3,
                "norm": "pre", "share_embeddings": True, "tie_output": True}
    model = {**defaults, **raw.get("model", {}), "dropout": 0.0, "type": "transformer"}
    return TransformerConfig(**model), vocab or raw.get("vocab", {}).get("size", 8000)


# ---- nmtkit ----


def nmtkit_decoder(cfg: TransformerConfig, vocab: int, steps: int, int8: bool) -> Decode:
    keep_freed_memory()  # as nmtkit.Translator does on the CPU
    torch.manual_seed(0)
    model = build_model(cfg, vocab, vocab).eval()
    if int8:
        model = quantize_int8(model)
    elif packing_pays()[0]:  # as nmtkit.Translator does on the CPU: where packing pays
        pack_linears(model)

    def decode(sentences: list[list[int]], beam: int) -> list[int]:
        src, lengths = collate_source(sentences)  # appends EOS
        # steps - 1 tokens, then EOS: `steps` decoder steps, as for the peers
        limits = {"max_len_a": 0.0, "max_len_b": steps - 1, "min_len": steps - 1}
        if beam == 1:
            hyps = greedy_search(model, src, lengths, **limits)
        else:
            hyps = beam_search(model, src, lengths, beam, 1.0, **limits)
        return [len(h.tokens) + 1 for h in hyps]  # + EOS

    return decode


# ---- Hugging Face transformers ----


def marian_model(cfg: TransformerConfig, vocab: int):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ff_size, decoder_ffn_dim=cfg.ff_size,
        activation_function="relu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=512, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=vocab - 1, eos_token_id=0,
        decoder_start_token_id=vocab - 1, forced_eos_token_id=0,
    )
    torch.manual_seed(0)
    return MarianMTModel(config).eval()


def hf_decoder(model, steps: int) -> Decode:
    pad = model.config.pad_token_id

    def decode(sentences: list[list[int]], beam: int) -> list[int]:
        width = max(len(s) for s in sentences) + 1
        ids = torch.full((len(sentences), width), pad)
        for i, s in enumerate(sentences):
            ids[i, : len(s) + 1] = torch.tensor(s + [0])  # + </s> (id 0 in Marian)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=ids != pad, num_beams=beam, do_sample=False,
                # + 1: HF counts the decoder start token; the last step is forced to </s>
                min_length=steps + 1, max_length=steps + 1, length_penalty=1.0, early_stopping=False,
            )
        return [out.size(1) - 1] * len(sentences)  # all rows share the forced length

    return decode


# ---- CTranslate2 ----


def ct2_path(folder: Path, kind: str) -> Path:
    return folder / f"ct2-{kind}"


def ct2_models(vocab: int, folder: Path) -> None:
    """Add the tokenizer files CTranslate2's converter reads to the saved Marian model, convert
    it once per compute type, and save the vocabulary (id -> token) as tokens.json."""
    import ctranslate2
    import sentencepiece as spm

    hf_dir = folder / "marian"  # saved there by prepare_peers
    # any sentencepiece model will do: the converter only needs the tokenizer to load
    words = [f"w{i} x{i % 7} y{i % 13}" for i in range(2000)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_prefix=str(hf_dir / "spm"),
                                   vocab_size=64, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (hf_dir / name).write_bytes((hf_dir / "spm.model").read_bytes())
    tokens = ["</s>", "<unk>"] + [f"t{i}" for i in range(2, vocab - 1)] + ["<pad>"]
    (hf_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"source_lang": "en", "target_lang": "de", "model_max_length": 512}))
    (folder / "tokens.json").write_text(json.dumps(tokens))
    for kind in ("float32", "int8"):
        converter = ctranslate2.converters.TransformersConverter(str(hf_dir))
        converter.convert(str(ct2_path(folder, kind)), quantization=kind, force=True)


def nmtkit_ct2_model(cfg: TransformerConfig, vocab: int, folder: Path) -> None:
    """The nmtkit model of `nmtkit_decoder` (same seed), exported as `nmtkit export` does."""
    from types import SimpleNamespace

    import ctranslate2

    from nmtkit.export import build_spec

    torch.manual_seed(0)
    model = build_model(cfg, vocab, vocab).eval()
    tokens = ["<pad>", "<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(4, vocab)]
    tokenizer = SimpleNamespace(vocab=lambda: tokens)
    config = SimpleNamespace(model=cfg)  # all build_spec reads of the config
    spec = build_spec(SimpleNamespace(model=model, config=config, path="bench",
                                      src_tokenizer=tokenizer, tgt_tokenizer=tokenizer))

    class Converter(ctranslate2.converters.Converter):
        def _load(self):
            return spec

    Converter().convert(str(ct2_path(folder, "nmtkit")), force=True)
    (folder / "nmtkit-tokens.json").write_text(json.dumps(tokens))


def ct2_decoder(path: Path, compute_type: str, tokens: list[str], steps: int, threads: int,
                add_eos: bool = True) -> Decode:
    import ctranslate2

    translator = ctranslate2.Translator(str(path), device="cpu", compute_type=compute_type,
                                        intra_threads=threads, inter_threads=1)

    def decode(sentences: list[list[int]], beam: int) -> list[int]:
        # the converted config has add_source_eos=false: append </s> as Marian training did
        source = [[tokens[i] for i in s] + (["</s>"] if add_eos else []) for s in sentences]
        results = translator.translate_batch(
            source, beam_size=beam, max_batch_size=len(source), length_penalty=1.0,
            min_decoding_length=steps, max_decoding_length=steps,
        )
        return [len(r.hypotheses[0]) for r in results]

    return decode


# ---- measuring: one worker process per system ----

def make_sentences(args: argparse.Namespace, vocab: int) -> list[list[int]]:
    """The same random sources in every worker (Python's random: see `worker`)."""
    rng = random.Random(0)
    lengths = [rng.randint(args.src_len - 3, args.src_len + 3) for _ in range(args.sentences)]
    return [[rng.randint(4, vocab - 2) for _ in range(n)] for n in lengths]


def build_system(name: str, args: argparse.Namespace, cfg: TransformerConfig, vocab: int,
                 folder: Path) -> Decode:
    if name in ("nmtkit fp32", "nmtkit int8"):
        return nmtkit_decoder(cfg, vocab, args.steps, int8=name.endswith("int8"))
    if name.startswith("transformers"):
        from transformers import MarianMTModel

        model = MarianMTModel.from_pretrained(folder / "marian").eval()
        if name.endswith("int8"):  # PyTorch's dynamic int8 linear layers, as nmtkit's --quantize
            model = quantize_int8(model)
        return hf_decoder(model, args.steps)
    if name.startswith("nmtkit->ct2"):  # its config appends </s> itself (add_source_eos)
        tokens = json.loads((folder / "nmtkit-tokens.json").read_text())
        return ct2_decoder(ct2_path(folder, "nmtkit"), "float32", tokens, args.steps, args.threads,
                           add_eos=False)
    kind = "float32" if name.endswith("fp32") else "int8"
    tokens = json.loads((folder / "tokens.json").read_text())
    return ct2_decoder(ct2_path(folder, kind), kind, tokens, args.steps, args.threads)


def worker(name: str, args: argparse.Namespace) -> None:
    """Build one system, then time each "beam batch" request read from stdin; reply seconds.

    A CTranslate2 worker runs no PyTorch operation at all: CTranslate2 brings its own copy of
    GNU OpenMP, and once PyTorch's copy has started its thread pool in the same process,
    CTranslate2 with 2 threads decoded up to 6 times slower here."""
    if not name.startswith(("ctranslate2", "nmtkit->ct2")):
        torch.set_num_threads(args.threads)
    cfg, vocab = model_shape(args.config, args.vocab)
    decode = build_system(name, args, cfg, vocab, Path(args.folder))
    sentences = make_sentences(args, vocab)
    for line in sys.stdin:
        beam, batch = (int(x) for x in line.split())
        group = sentences if batch > 1 else sentences[: args.batch1_sentences]
        start = time.perf_counter()
        if batch > 1:
            out_lengths = decode(group, beam)
        else:
            out_lengths = [n for s in group for n in decode([s], beam)]
        elapsed = time.perf_counter() - start
        assert out_lengths == [args.steps] * len(group), (name, out_lengths)
        print(json.dumps(elapsed), flush=True)


def prepare_peers(cfg: TransformerConfig, vocab: int, folder: Path) -> list[str]:
    """Save the Marian model and its CTranslate2 conversions; returns the peers available."""
    try:
        marian = marian_model(cfg, vocab)
    except ImportError as err:
        print(f"skipping transformers and ctranslate2 (its converter needs transformers): {err}")
        return []
    marian.save_pretrained(folder / "marian")
    try:
        ct2_models(vocab, folder)
    except ImportError as err:
        print(f"skipping ctranslate2: {err}")
        return ["transformers fp32", "transformers int8"]
    nmtkit_ct2_model(cfg, vocab, folder)
    return ["transformers fp32", "transformers int8", "ctranslate2 fp32", "ctranslate2 int8",
            "nmtkit->ct2 fp32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/multi30k-transformer.yaml")
    p.add_argument("--vocab", type=int, default=None, help="joint vocabulary (default: the config's)")
    p.add_argument("--sentences", type=int, default=64, help="sentences per batch of the big batch")
    p.add_argument("--batch1-sentences", type=int, default=8,
                   help="sentences timed one at a time (0: no batch-1 rows)")
    p.add_argument("--src-len", type=int, default=13, help="mean source length in subword tokens")
    p.add_argument("--steps", type=int, default=40, help="decoder steps (target tokens) per sentence")
    p.add_argument("--beams", default="1,5")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the medians here (benchmarks/avx2_columns.py)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.worker:  # a worker's stdout is the protocol
        print(machine_header())
    if args.worker:
        worker(args.worker, args)
        return
    cfg, vocab = model_shape(args.config, args.vocab)
    tmp = tempfile.TemporaryDirectory()
    names = ["nmtkit fp32", "nmtkit int8"] + prepare_peers(cfg, vocab, Path(tmp.name))
    forwarded = sys.argv[1:]
    workers = {
        name: subprocess.Popen(
            [sys.executable, __file__, *forwarded, "--worker", name, "--folder", tmp.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for name in names
    }

    def run(name: str, beam: int, batch: int) -> float:
        worker_process = workers[name]
        assert worker_process.stdin is not None and worker_process.stdout is not None
        worker_process.stdin.write(f"{beam} {batch}\n")
        worker_process.stdin.flush()
        reply = worker_process.stdout.readline()
        if not reply:
            sys.exit(f"the {name} worker failed (see its error above)")
        time.sleep(0.3)  # let the last system's threads go idle before the next one starts
        return json.loads(reply)

    beams = [int(b) for b in args.beams.split(",")]
    batches = (1, args.sentences) if args.batch1_sentences else (args.sentences,)
    settings = [(beam, batch) for beam in beams for batch in batches]
    for name in names:  # warm-up: first calls allocate and pick kernels
        run(name, max(beams), args.sentences)
    times: dict[tuple[str, int, int], list[float]] = {}
    for repeat in range(args.repeats):
        for beam, batch in settings:
            shift = repeat % len(names)  # alternate who goes first
            for name in names[shift:] + names[:shift]:
                times.setdefault((name, beam, batch), []).append(run(name, beam, batch))
    for worker_process in workers.values():
        worker_process.communicate()  # closes stdin: the worker ends

    sentences = make_sentences(args, vocab)
    print(f"\nTransformer d_model {cfg.d_model}, {cfg.heads} heads, ff {cfg.ff_size}, "
          f"{cfg.encoder_layers}+{cfg.decoder_layers} layers, vocab {vocab}, {cfg.norm}-norm; "
          f"{args.threads} threads; {args.steps} decoder steps per sentence; source mean "
          f"{sum(len(s) for s in sentences) / len(sentences):.1f} tokens; median of {args.repeats}\n")
    print(f"| {'system':<18} | beam | batch | sentences/s | (slowest-fastest) | target tokens/s | "
          "vs transformers same dtype | vs ctranslate2 same dtype |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for beam, batch in settings:
        n = args.sentences if batch > 1 else args.batch1_sentences
        speed = {name: n / statistics.median(times[(name, beam, batch)]) for name in names}
        rows += [{"system": name, "beam": beam, "batch": batch, "sentences_per_s": v}
                 for name, v in speed.items()]
        for name in names:
            spread = f"{n / max(times[(name, beam, batch)]):.1f}-{n / min(times[(name, beam, batch)]):.1f}"
            dtype = name.split()[-1]
            hf = speed.get(f"transformers {dtype}")
            ct2 = speed.get(f"ctranslate2 {dtype}")
            vs_hf = f"{speed[name] / hf:.2f}x" if hf and not name.startswith("transformers") else ""
            vs_ct2 = f"{speed[name] / ct2:.2f}x" if ct2 and name.startswith("nmtkit") else ""
            print(f"| {name:<18} | {beam} | {batch} | {speed[name]:.1f} | {spread} | "
                  f"{speed[name] * args.steps:.0f} | {vs_hf} | {vs_ct2} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
