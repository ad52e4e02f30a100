"""The `nmtkit` command. User mistakes end with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import math
import os
import queue
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from nmtkit.errors import NMTKitError, NMTKitWarning, TrainingInterrupted
from nmtkit.files import os_error

if TYPE_CHECKING:
    from nmtkit.translator import Translation

TOKENIZERS = ("13a", "intl", "char", "zh", "none")  # sacreBLEU's that need nothing downloaded


def cmd_prepare(args: argparse.Namespace) -> None:
    from nmtkit.config import load_config
    from nmtkit.data import prepare

    cfg = load_config(args.config, args.set)
    data = prepare(cfg.data, cfg.vocab)
    print(f"prepared data in {data.dir}")


def cmd_train(args: argparse.Namespace) -> None:
    import shlex

    from nmtkit.checkpoint import read_json, resolve_checkpoint
    from nmtkit.config import load_config
    from nmtkit.training import train

    init_from = resolve_checkpoint(args.init_from) if args.init_from else None
    # fine-tuning: a config without a model section takes the checkpoint's
    model = read_json(init_from / "checkpoint.json").get("config", {}).get("model") if init_from else None
    cfg = load_config(args.config, args.set, model=model if isinstance(model, dict) else None)
    again = ["nmtkit", "train", args.config, *[f"--set={s}" for s in args.set], "--resume"]
    if args.init_from:  # a config without a model section needs it again to resume
        again += ["--init-from", args.init_from]
    train(cfg, resume=args.resume, init_from=init_from,
          resume_command=" ".join(shlex.quote(a) for a in again))


def _read_ahead(stream: BinaryIO | TextIO, lines: queue.Queue, name: str) -> None:
    """The reader thread: every input line into the queue, then None (or the error that stopped
    it). Lines end at "\\n" (with an optional "\\r" before it) and nowhere else. Bytes are
    decoded line by line, so that bad UTF-8 is reported on its own line (a decoder that reads
    ahead by blocks fails on the block, lines before the bad one)."""
    n = 0
    try:
        for raw in stream:
            n += 1
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if n == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            lines.put(line.removesuffix("\n").removesuffix("\r"))
        lines.put(None)
    except UnicodeDecodeError:
        lines.put(NMTKitError(f"{name}: line {n} is not valid UTF-8"))
    except Exception as err:  # raised again on the main thread
        lines.put(err)


def _arriving_lines(stream: BinaryIO | TextIO, max_lines: int, name: str) -> Iterator[list[str]]:
    """Input lines in groups of whatever has arrived (1 to max_lines) when the translator is ready.

    A thread reads ahead. A file or a fast pipe arrives quicker than it is translated, so groups
    are large and batch well; a person typing (or a program waiting for each answer) gets every
    line translated as soon as it is entered."""
    lines: queue.Queue = queue.Queue(maxsize=4 * max_lines)  # bounded: a huge input is streamed
    threading.Thread(target=_read_ahead, args=(stream, lines, name), daemon=True).start()
    finished = False
    while not finished:
        group: list[str] = []
        item = lines.get()  # wait for the next line
        while True:
            if item is None:
                finished = True
                break
            if isinstance(item, Exception):
                raise item
            group.append(item)
            if len(group) >= max_lines:
                break
            try:
                item = lines.get(timeout=0.01)  # lines already on their way join this group
            except queue.Empty:
                break
        if group:
            yield group


def _search_options(args: argparse.Namespace) -> dict[str, object]:
    """translate/evaluate flags -> Translator.translate keyword arguments (None: the config's)."""
    options = {"beam": args.beam, "length_penalty": args.length_penalty, "max_len_a": args.max_len_a,
               "max_len_b": args.max_len_b, "too_long": args.too_long}
    if getattr(args, "sample", False):
        options.update(sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return options


def _jsonl(translation: Translation) -> dict[str, object]:
    from nmtkit.alignment import pharaoh

    record: dict[str, object] = {"translation": translation.text, "score": translation.score,
                                 "tokens": translation.tokens}
    if translation.alignment is not None:
        record["alignment"] = pharaoh(translation.alignment)
    return record


def _load_translator(args: argparse.Namespace):
    from nmtkit.checkpoint import resolve_checkpoint
    from nmtkit.translator import Translator

    paths = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    return Translator.load([resolve_checkpoint(p) for p in paths], args.device,
                           quantize=getattr(args, "quantize", None))


class _TooLong:
    """Counts the inputs the translator truncated or skipped over a whole stream, for one
    warning line at the end (instead of one per batch)."""

    def __init__(self) -> None:
        self.count, self.first, self.seen, self.limit = 0, 0, 0, 0

    def add(self, translator, n_lines: int) -> None:
        if translator.last_too_long and not self.count:
            self.first = self.seen + translator.last_too_long[0] + 1
        self.count += len(translator.last_too_long)
        self.seen += n_lines
        self.limit = translator.max_input_tokens

    def report(self, policy: str, name: str) -> None:
        if self.count:
            done = "truncated to" if policy == "truncate" else "skipped (empty output), longer than"
            print(f"nmtkit: warning: {self.count} input line(s) {done} {self.limit} subword tokens "
                  f"(first: {name} line {self.first})", file=sys.stderr)


JSONL_KEYS = ("source", "prefix", "constraints")  # --input-format jsonl: what a line may hold


def _jsonl_inputs(lines: list[str], first_line: int, name: str,
                  translator) -> tuple[list[str], list[str]]:
    """--input-format jsonl: each line {"source": "...", "prefix": "..."} (prefix optional;
    "constraints" are read by _jsonl_constraints).
    Every mistake names its line: bad JSON, an unknown key, a value that is not text, a prefix
    the model cannot produce."""
    import json

    from nmtkit.vocabulary import check_text

    sources, prefixes = [], []
    for n, line in enumerate(lines, first_line):
        where = f"{name} line {n}"
        try:
            record = json.loads(line) if line.strip() else {"source": ""}
        except json.JSONDecodeError as err:
            raise NMTKitError(f"{where}: not valid JSON ({err.msg})") from None
        except RecursionError:  # some 100,000 nested brackets
            raise NMTKitError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(record, dict) or not isinstance(record.get("source"), str) or \
                not isinstance(record.get("prefix", ""), str):
            raise NMTKitError(f"{where}: expected an object with a \"source\" string "
                              "(and an optional \"prefix\" string)")
        unknown = [key for key in record if key not in JSONL_KEYS]
        if unknown:
            raise NMTKitError(f"{where}: unknown key {unknown[0]!r} (a line holds \"source\", "
                              "an optional \"prefix\" and optional \"constraints\")")
        for key in ("source", "prefix"):
            if key in record:
                check_text(record[key], f"{where}: {key!r}")
        prefix = record.get("prefix", "")
        try:
            translator.check_prefix(prefix)
        except NMTKitError as err:
            raise NMTKitError(f"{where}: {err}") from None
        sources.append(record["source"])
        prefixes.append(prefix)
    return sources, prefixes


def _jsonl_constraints(lines: list[str], first_line: int, name: str) -> list[list] | None:
    """--input-format jsonl: each line's optional "constraints" (a list of phrases, each a
    string or {"any": [...]}), checked, naming the line; None where no line has any."""
    import json

    from nmtkit.constraints import phrase_alternatives

    out, seen = [], False
    for n, line in enumerate(lines, first_line):
        record = json.loads(line) if line.strip() else {}
        wanted = record.get("constraints", []) if isinstance(record, dict) else []
        if not isinstance(wanted, list):
            raise NMTKitError(f"{name} line {n}: \"constraints\" must be a list of phrases")
        for j, c in enumerate(wanted):
            phrase_alternatives(c, f"{name} line {n}: constraint {j + 1}")
        seen = seen or bool(wanted)
        out.append(wanted)
    return out if seen else None


def _glossary(args: argparse.Namespace):
    """--glossary FILE (None without it), read and checked before any model is loaded."""
    from nmtkit.glossary import read_glossary

    if not getattr(args, "glossary", None):
        return None
    return read_glossary(Path(args.glossary), args.glossary_ignore_case)


def _check_constraints(translator, constraints: list[list] | None, first_line: int, name: str,
                       sources: list[str], prefixes: list[str] | None, options: dict) -> None:
    """Every constraint's phrases spelled by the target vocabulary, and each line's constraints
    fitting in its output, else an error naming the line."""
    from nmtkit.constraints import phrase_alternatives

    for i, wanted in enumerate(constraints or []):
        n = first_line + i
        for j, c in enumerate(wanted):
            for phrase in phrase_alternatives(c, f"{name} line {n}: constraint {j + 1}"):
                translator.constraint_ids(phrase, f"{name} line {n}: constraint {j + 1}")
        if wanted:
            try:
                translator.check_constraints(sources[i], wanted, prefixes[i] if prefixes else "",
                                             options.get("max_len_a"), options.get("max_len_b"))
            except NMTKitError as err:
                raise NMTKitError(f"{name} line {n}: {err}") from None


def cmd_translate(args: argparse.Namespace) -> None:
    import json
    import warnings

    import torch

    from nmtkit.files import check_input_file
    from nmtkit.glossary import merge

    if args.input:
        check_input_file(Path(args.input), "--input", allow_stream=True)
    glossary = _glossary(args)
    translator = _load_translator(args)
    options = _search_options(args)
    options.update(no_repeat_ngram_size=args.no_repeat_ngram_size,
                   repetition_penalty=args.repetition_penalty, replace_unk=args.replace_unk)
    if args.sample:  # one generator for the whole stream: a seed fixes every sample in it
        generator = torch.Generator(translator.device)
        if args.seed is None:
            generator.seed()
        else:
            generator.manual_seed(args.seed)
        options["seed"] = generator
    details = args.output_format == "jsonl" or args.nbest > 1 or args.alignment
    if args.alignment_layer is not None and not args.alignment:
        raise NMTKitError(f"--alignment-layer {args.alignment_layer} needs --alignment (it chooses the "
                          "layer whose attention gives the alignments)")
    extra = {"alignment": True, "alignment_layer": args.alignment_layer} if args.alignment else {}
    # the options are checked now, not when the first line arrives
    translator.translate([], args.batch_tokens, details, nbest=args.nbest, **options, **extra)
    name = args.input or "standard input"
    if args.input:  # bytes, decoded line by line as strict UTF-8 (see _read_ahead)
        stream: BinaryIO | TextIO = open(args.input, "rb")  # noqa: SIM115
    elif hasattr(sys.stdin, "buffer"):  # (not the locale's escapes for bad bytes)
        stream = sys.stdin.buffer
    else:
        stream = sys.stdin
    out = sys.stdout
    too_long = _TooLong()
    line = 1
    try:
        for lines in _arriving_lines(stream, args.chunk_lines, name):
            prefixes, constraints = None, None
            if args.input_format == "jsonl":
                records = lines
                lines, prefixes = _jsonl_inputs(records, line, name, translator)  # (checks the JSON first)
                constraints = _jsonl_constraints(records, line, name)
            constraints = merge(glossary, lines, constraints)
            _check_constraints(translator, constraints, line, name, lines, prefixes, options)
            line += len(lines)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NMTKitWarning)  # counted, reported once at the end
                results = translator.translate(lines, args.batch_tokens, return_details=details,
                                               attention=False, nbest=args.nbest, prefix=prefixes,
                                               constraints=constraints, **options, **extra)
            too_long.add(translator, len(lines))
            for result in results:
                if args.output_format == "jsonl":  # one object per input line
                    record = _jsonl(result)
                    if args.nbest > 1:
                        record["nbest"] = [_jsonl(alt) for alt in result.nbest]
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                elif args.nbest > 1:  # n lines per input line, best first (empty if fewer found)
                    texts = [_text_line(alt) for alt in result.nbest]
                    out.write("".join(t + "\n" for t in texts + [""] * (args.nbest - len(texts))))
                else:
                    out.write((result if isinstance(result, str) else _text_line(result)) + "\n")
            out.flush()
    finally:
        if args.input:
            stream.close()
    too_long.report(args.too_long or translator.decoding.too_long, name)


def _text_line(translation: Translation) -> str:
    """The translation, and with --alignment its word alignment after ' ||| ' (as Marian)."""
    from nmtkit.alignment import pharaoh

    if translation.alignment is None:
        return translation.text
    return f"{translation.text} ||| {pharaoh(translation.alignment)}"


def _moses_lang(args: argparse.Namespace) -> str:
    """--lang, else --ref's extension when it names a language (test2016.fr), else en."""
    if args.lang:
        return args.lang
    suffix = Path(args.ref).suffix[1:]
    return suffix.lower() if len(suffix) == 2 and suffix.isalpha() else "en"


def cmd_evaluate(args: argparse.Namespace) -> None:
    import warnings

    from nmtkit.data import read_parallel
    from nmtkit.files import check_output_file, write_output_text
    from nmtkit.glossary import merge
    from nmtkit.metrics import score

    src, ref = read_parallel(Path(args.src), Path(args.ref))  # exist, UTF-8, same line count
    if not any(line.strip() for line in src):
        raise NMTKitError(f"--src {args.src}: no sentence to translate (the file is empty or blank)")
    if args.output:
        check_output_file(Path(args.output), [Path(args.src), Path(args.ref)], option="--output",
                          force=args.force)
    if args.tokenize == "moses":
        from nmtkit.metrics import moses_tokenized

        moses_tokenized([], _moses_lang(args))  # sacremoses is there, before the translating
    glossary = _glossary(args)
    translator = _load_translator(args)
    policy = args.too_long or translator.decoding.too_long
    constraints = merge(glossary, src, None)
    _check_constraints(translator, constraints, 1, args.src, src, None, _search_options(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NMTKitWarning)
        hyps = translator.translate(src, batch_tokens=args.batch_tokens, constraints=constraints,
                                    **_search_options(args))
    too_long = _TooLong()
    too_long.add(translator, len(src))
    too_long.report(policy, args.src)
    if args.output:
        write_output_text(Path(args.output), "".join(h + "\n" for h in hyps))
    print(score(hyps, ref, args.tokenize, _moses_lang(args)))


def cmd_score(args: argparse.Namespace) -> None:
    import json
    import warnings

    from nmtkit.data import read_parallel

    src, tgt = read_parallel(Path(args.src), Path(args.tgt))
    translator = _load_translator(args)
    with warnings.catch_warnings():  # over-long sources are reported below, targets by score
        warnings.filterwarnings("ignore", r"\d+ input\(s\) longer", NMTKitWarning)
        scores = translator.score(src, tgt, batch_tokens=args.batch_tokens, too_long=args.too_long)
    too_long = _TooLong()
    too_long.add(translator, len(src))
    too_long.report(args.too_long or translator.decoding.too_long, args.src)
    for s in scores:
        if args.output_format == "jsonl":
            print(json.dumps({"log_prob": s.log_prob, "normalized": s.normalized, "tokens": s.tokens,
                              "token_scores": s.token_scores, "truncated": s.truncated,
                              "unknown": s.unknown}, ensure_ascii=False))
        else:
            print(f"{s.log_prob:.4f}\t{s.normalized:.4f}")


def cmd_plot_attention(args: argparse.Namespace) -> None:
    from nmtkit.plotting import check_picture_path, plot_attention, plot_attention_grid

    check_picture_path(Path(args.out))
    if not args.sentence.strip():
        raise NMTKitError("--sentence is empty: give the sentence whose attention to draw")
    translator = _load_translator(args)
    (result,) = translator.translate([args.sentence], return_details=True, beam=args.beam,
                                     attention_layer=args.layer, attention_head=args.head,
                                     all_attention=args.all_heads)
    if result.attention is None and result.attention_layers is None:
        raise NMTKitError(f"{args.checkpoint}: this model has no attention (model.attention: none)")
    targets = result.tokens + ["</s>"]
    if args.all_heads:
        out = plot_attention_grid(result.attention_layers, result.source_tokens, targets,
                                  Path(args.out), title=result.text)
    else:
        title = result.text
        if translator.decoder_layers > 1 or translator.heads > 1:
            layer = translator.decoder_layers - 1 if args.layer is None else args.layer
            title += f"\nlayer {layer}, {'mean of heads' if args.head is None else f'head {args.head}'}"
        out = plot_attention(result.attention, result.source_tokens, targets, Path(args.out), title=title)
    print(f"{result.text}\nwrote {out}")


def cmd_plot_curves(args: argparse.Namespace) -> None:
    from nmtkit.plotting import check_picture_path, plot_curves
    from nmtkit.training import load_log

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "curves.png"
    rows = load_log(run_dir)
    if not any(r.get("type") in ("train", "valid") for r in rows):
        raise NMTKitError(f"{run_dir / 'log.jsonl'}: no training or validation records yet: nothing to draw")
    check_picture_path(out)
    plot_curves(rows, out, title=str(run_dir))
    print(f"wrote {out}")


def cmd_average(args: argparse.Namespace) -> None:
    from nmtkit.checkpoint import average_checkpoints

    out = average_checkpoints([Path(p) for p in args.checkpoints], Path(args.out))
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")


def cmd_import(args: argparse.Namespace) -> None:
    from nmtkit.marian import import_marian

    out = import_marian(Path(args.src), Path(args.out))
    print(f"imported the Marian model {args.src} into {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from nmtkit.export import export_ctranslate2

    out = export_ctranslate2(Path(args.checkpoint), Path(args.out), args.quantization)
    print(f"exported {args.checkpoint} to CTranslate2 in {out}")


def cmd_split(args: argparse.Namespace) -> None:
    from nmtkit.split import split_corpus

    report = split_corpus(Path(args.src), Path(args.tgt), Path(args.out), args.valid, args.test,
                          args.seed, group_duplicates=not args.split_duplicates)
    for split, (src, tgt) in report.files.items():
        print(f"{split}: {report.pairs[split]:,} pairs  {src}  {tgt}")
    if report.duplicates:
        print(f"({report.duplicates:,} pairs share their source sentence with another pair; each "
              "such group went to one split)")
    print("\nfor your config (e.g. a copy of configs/base-transformer.yaml):\ndata:")
    for split, (src, tgt) in report.files.items():
        print(f"  {split}_src: {src}\n  {split}_tgt: {tgt}")


def cmd_info(args: argparse.Namespace) -> None:
    from nmtkit.info import describe, info_json, render

    facts = describe(Path(args.path))
    print(info_json(facts) if args.json else render(facts))


def cmd_generate(args: argparse.Namespace) -> None:
    translator = _load_translator(args)
    prompts = args.prompt or [""]
    outputs = translator.generate(prompts, max_len=args.max_len, beam=args.beam or 1,
                                  sample=args.sample, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed, num=args.num)
    for texts in outputs:
        for text in texts:
            print(text)


def cmd_serve(args: argparse.Namespace) -> None:
    from time import perf_counter

    from nmtkit.loading import answering_loading, listen

    start = perf_counter()
    listener = listen(args.host, args.port)  # a port in use is one clear error, at once
    print(f"nmtkit serve: listening on {args.host}:{args.port}; loading the model (503 until it is "
          "ready)", flush=True)
    # until the model is loaded (seconds: torch, the web stack, the checkpoint), every request
    # gets 503, /health {"status": "loading"}: a load balancer waits instead of seeing a refusal
    with answering_loading(listener):
        try:
            from nmtkit.server import ServeSettings, serve
        except ImportError as err:
            raise NMTKitError(f"nmtkit serve needs FastAPI, uvicorn and prometheus-client ({err.name} "
                              "is missing): pip install 'nmtkit[serve]'") from None
        imported = perf_counter()
        settings = ServeSettings(
            batching=not args.no_batching, batch_wait_ms=args.batch_wait_ms,
            max_batch_tokens=args.max_batch_tokens, queue_limit=args.queue_limit, timeout_s=args.timeout,
            max_sentences=args.max_sentences, max_chars=args.max_chars, max_beam=args.max_beam,
            max_nbest=args.max_nbest, max_k=args.max_k, too_long=args.too_long or "truncate")
        glossary = _glossary(args)
        translator = _load_translator(args)
        loaded = perf_counter()
    serve(translator, settings, listener, args.threads, glossary=glossary,
          started=f"ready {loaded - start:.1f} s after start (imports {imported - start:.1f} s, "
                  f"model {loaded - imported:.1f} s)")


def cmd_demo(args: argparse.Namespace) -> None:
    from nmtkit.demo import run_demo, run_vit_demo

    if args.model == "vit":
        run_vit_demo(args.set)
    else:
        run_demo(model=args.model, direction=args.direction, overrides=args.set)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line `nmtkit: error: ...` and exit 2, like every
    other mistake (argparse prints its usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("nmtkit").strip()
        print(f"nmtkit: error: {command + ': ' if command else ''}{message} "
              f"(see nmtkit {command + ' ' if command else ''}--help)", file=sys.stderr)
        sys.exit(2)


def _number(kind: type, low: float | None = None, strict: bool = False, high: float | None = None):
    """An argparse type: a finite int or float within bounds, with a message that says so."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if low is not None and (value < low or (strict and value == low)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'>' if strict else '>='} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be <= {high:g}")
        return value

    return parse


POSITIVE = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
NON_NEGATIVE = _number(float, 0.0)
POSITIVE_FLOAT = _number(float, 0.0, strict=True)
PROBABILITY = _number(float, 0.0, strict=True, high=1.0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nmtkit", description="Neural machine translation toolkit.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="YAML config file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.hidden_size=512")

    sp = sub.add_parser("split", help="split one corpus file pair into train/valid/test")
    sp.add_argument("src", help="source sentences, one per line")
    sp.add_argument("tgt", help="their translations, line by line")
    sp.add_argument("--valid", type=NON_NEGATIVE_INT, default=1000, help="pairs for validation")
    sp.add_argument("--test", type=NON_NEGATIVE_INT, default=1000, help="pairs for testing")
    sp.add_argument("--seed", type=int, default=1, help="the same seed gives the same split")
    sp.add_argument("--out", required=True, help="a new (or empty) folder for the six files")
    sp.add_argument("--split-duplicates", action="store_true",
                    help="split line by line: copies of a source sentence may end up in "
                    "different splits (by default each group of copies goes to one split)")
    sp.set_defaults(fn=cmd_split)

    sp = sub.add_parser("prepare", help="validate, learn subwords, binarize the corpus")
    with_config(sp)
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="train a model (prepares the data first if needed)")
    with_config(sp)
    sp.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], default=None,
                    help="continue from the newest complete checkpoint of training.out_dir "
                    "(an error if there is none); --resume auto starts a new run then")
    sp.add_argument("--init-from", metavar="CKPT", default=None,
                    help="fine-tune: start from this checkpoint's weights (or a run folder's best) "
                    "and its subword models, with a new optimizer and schedule")
    sp.set_defaults(fn=cmd_train)

    def with_ckpt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--checkpoint", required=True,
                        help="checkpoint folder, e.g. runs/x/best, or a run folder (its best)")
        sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        sp.add_argument("--batch-tokens", type=POSITIVE, default=None,
                        help="source tokens per batch (default: the config's decoding.batch_tokens)")

    def with_decoding(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--beam", type=POSITIVE, default=None,
                        help="beam size, 1 = greedy (default: the config's decoding.beam)")
        sp.add_argument("--length-penalty", type=NON_NEGATIVE, default=None,
                        help="GNMT length penalty alpha, 0 = none (default: the config's)")
        sp.add_argument("--max-len-a", type=NON_NEGATIVE, default=None,
                        help="outputs of at most a * source length + b tokens (default: the config's)")
        sp.add_argument("--max-len-b", type=NON_NEGATIVE_INT, default=None, help="see --max-len-a")
        sp.add_argument("--too-long", choices=["truncate", "skip", "error"], default=None,
                        help="an input longer than the model's limit (decoding.max_input_len, else "
                        "data.max_len): cut it, translate it as empty, or stop (default: the "
                        "config's decoding.too_long, truncate)")
        sp.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 dynamic quantization of the linear layers (CPU)")
        with_glossary(sp)

    def with_glossary(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--glossary", metavar="FILE", default=None,
                        help="a TSV of 'source term<TAB>target term' lines: where a source term "
                        "occurs as whole words, its target term must appear in the translation")
        sp.add_argument("--glossary-ignore-case", action="store_true",
                        help="match the glossary's source terms regardless of case")

    sp = sub.add_parser("translate", help="translate stdin (or --input) to stdout, line by line")
    sp.add_argument("--checkpoint", required=True, action="append",
                    help="checkpoint folder, e.g. runs/x/best, or a run folder (its best); give "
                    "it several times to ensemble")
    sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sp.add_argument("--batch-tokens", type=POSITIVE, default=None,
                    help="source tokens per batch (default: the config's decoding.batch_tokens)")
    sp.add_argument("--input", help="read this file instead of stdin")
    sp.add_argument("--chunk-lines", type=POSITIVE, default=2000, help="most lines read per batch round")
    with_decoding(sp)
    sp.add_argument("--nbest", type=POSITIVE, default=1,
                    help="output the N best (beam) or N samples per input line")
    sp.add_argument("--sample", action="store_true", help="sample each token (instead of --beam)")
    sp.add_argument("--temperature", type=POSITIVE_FLOAT, default=1.0, help="sampling temperature")
    sp.add_argument("--top-k", type=NON_NEGATIVE_INT, default=0,
                    help="sample from the k likeliest (0: all)")
    sp.add_argument("--top-p", type=PROBABILITY, default=1.0, help="sample from the nucleus of mass p")
    sp.add_argument("--seed", type=int, default=None, help="seed for --sample")
    sp.add_argument("--input-format", choices=["text", "jsonl"], default="text",
                    help='jsonl: {"source": ..., "prefix": ..., "constraints": [...]} per line; the '
                    "translation begins with the prefix (a last word typed in part is completed) and "
                    'contains each constraint (a phrase, or {"any": [phrases]})')
    sp.add_argument("--output-format", choices=["text", "jsonl"], default="text",
                    help="jsonl: {translation, score, tokens[, nbest][, alignment]} per input line")
    sp.add_argument("--alignment", action="store_true",
                    help="word alignments from the attention, Pharaoh i-j pairs (source-target "
                    "word): after ' ||| ' on each line, or in jsonl's \"alignment\"")
    sp.add_argument("--alignment-layer", type=int, default=None,
                    help="the decoder layer whose attention (mean of heads) aligns (default: the "
                    "second-to-last of a Transformer, which aligns best; the RNN has one)")
    sp.add_argument("--no-repeat-ngram-size", type=NON_NEGATIVE_INT, default=0,
                    help="no n-gram of this size twice in an output (0: off)")
    sp.add_argument("--repetition-penalty", type=POSITIVE_FLOAT, default=1.0,
                    help="> 1 discourages tokens already in the output (CTranslate2's)")
    sp.add_argument("--replace-unk", action="store_true",
                    help="replace a produced <unk> by the source word it attends to most")
    sp.set_defaults(fn=cmd_translate)

    sp = sub.add_parser("evaluate", help="sacreBLEU BLEU and chrF of translations of --src")
    with_ckpt(sp)
    with_decoding(sp)
    sp.add_argument("--src", required=True, help="source sentences, one per line")
    sp.add_argument("--ref", required=True, help="reference translations, line by line with --src")
    sp.add_argument("--output", help="also write the translations here (a new file; an "
                    "existing one only with --force, and never --src or --ref)")
    sp.add_argument("--force", action="store_true", help="let --output replace an existing file")
    sp.add_argument("--tokenize", default=None, choices=sorted((*TOKENIZERS, "moses")),
                    help="sacreBLEU tokenizer for BLEU (default 13a; char or zh for text written "
                    "without spaces); moses: the Moses tokenizer, as papers' Multi30k/WMT tables "
                    "score (with its lowercased line), needs nmtkit[moses]")
    sp.add_argument("--lang", default=None, help="the references' language for --tokenize moses "
                    "(its rules, e.g. French l'); default: --ref's extension when it is a "
                    "two-letter code (test2016.fr), else en")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("score", help="the model's log-probability of given translations (forced "
                        "decoding): filtering corpora, reranking, checking references")
    with_ckpt(sp)
    sp.add_argument("--src", required=True, help="source sentences, one per line")
    sp.add_argument("--tgt", required=True, help="their translations to score, line by line")
    sp.add_argument("--too-long", choices=["truncate", "skip", "error"], default=None,
                    help="a source longer than the model's limit (see translate --help)")
    sp.add_argument("--output-format", choices=["text", "jsonl"], default="text",
                    help="text: 'log_prob<TAB>normalized' per line (normalized: per piece, </s> "
                    "included); jsonl: also the pieces and each one's log-probability")
    sp.set_defaults(fn=cmd_score)

    sp = sub.add_parser("plot-attention", help="attention heatmap of one sentence")
    with_ckpt(sp)
    sp.add_argument("--sentence", required=True)
    sp.add_argument("--out", required=True, help="PNG file to write")
    sp.add_argument("--layer", type=NON_NEGATIVE_INT, default=None,
                    help="Transformer: decoder layer (default last)")
    sp.add_argument("--head", type=NON_NEGATIVE_INT, default=None,
                    help="Transformer: head (default mean of heads)")
    sp.add_argument("--all-heads", action="store_true",
                    help="Transformer: a grid of every layer (rows) and head (columns)")
    sp.add_argument("--beam", type=POSITIVE, default=None,
                    help="translate with this beam (default: the config's decoding.beam)")
    sp.set_defaults(fn=cmd_plot_attention)

    sp = sub.add_parser("plot-curves", help="training/validation curves of a run as PNG")
    sp.add_argument("run_dir")
    sp.add_argument("--out", default=None, help="PNG file (default RUN_DIR/curves.png)")
    sp.set_defaults(fn=cmd_plot_curves)

    sp = sub.add_parser("average", help="average the weights of several checkpoints")
    sp.add_argument("checkpoints", nargs="+", help="checkpoint folders of one architecture")
    sp.add_argument("--out", required=True, help="folder of the averaged checkpoint")
    sp.set_defaults(fn=cmd_average)

    sp = sub.add_parser("import", help="turn a pretrained model into an nmtkit checkpoint")
    sp.add_argument("format", choices=["marian"], help="marian: an OPUS-MT model, as a Hugging "
                    "Face MarianMTModel folder or as the original Marian release")
    sp.add_argument("src", help="the folder: Hugging Face's (config.json, model.safetensors or "
                    "pytorch_model.bin, source.spm, target.spm, vocab.json) or Marian's release "
                    "(*.npz, decoder.yml, *.vocab.yml, source.spm, target.spm)")
    sp.add_argument("out", help="the new checkpoint folder (must not exist)")
    sp.set_defaults(fn=cmd_import)

    sp = sub.add_parser("export", help="write a checkpoint in another engine's format (CTranslate2)")
    sp.add_argument("checkpoint", help="a Transformer or decoder-only checkpoint (or run folder)")
    sp.add_argument("out", help="the new model folder (must not exist)")
    sp.add_argument("--format", required=True, choices=["ctranslate2"], help="the engine")
    sp.add_argument("--quantization", default=None, choices=["int8", "int16", "float16"],
                    help="store the weights quantized (default: float32)")
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("generate", help="continue text with a language model (decoder_only)")
    sp.add_argument("--checkpoint", required=True, help="a language model's checkpoint or run folder")
    sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sp.add_argument("--prompt", action="append", default=[],
                    help="text to continue (repeat it for several; default: from nothing)")
    sp.add_argument("--num", type=POSITIVE, default=1, help="continuations per prompt")
    sp.add_argument("--max-len", type=POSITIVE, default=50, help="the most tokens to generate")
    sp.add_argument("--beam", type=POSITIVE, default=None, help="beam search (default greedy)")
    sp.add_argument("--sample", action="store_true", help="sample each token")
    sp.add_argument("--temperature", type=POSITIVE_FLOAT, default=1.0)
    sp.add_argument("--top-k", type=NON_NEGATIVE_INT, default=0)
    sp.add_argument("--top-p", type=PROBABILITY, default=1.0)
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(fn=cmd_generate)

    sp = sub.add_parser("serve", help="a REST service with cross-request batching, and a page to "
                        "see the attention and steer translations")
    sp.add_argument("--checkpoint", required=True, action="append",
                    help="checkpoint or run folder; give it several times to serve an ensemble")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this "
                    "machine only; 0.0.0.0 for every interface)")
    sp.add_argument("--port", type=_number(int, 1, high=65535), default=8000)
    sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sp.add_argument("--quantize", choices=["int8"], default=None, help="int8 linear layers (CPU)")
    sp.add_argument("--threads", type=NON_NEGATIVE_INT, default=0,
                    help="torch threads for the one model worker (default: torch's, one per core); "
                    "run one server per machine, not several on the same cores")
    sp.add_argument("--no-batching", action="store_true",
                    help="one model call per request (for comparison)")
    sp.add_argument("--batch-wait-ms", type=NON_NEGATIVE, default=10.0,
                    help="how long a model call waits for more requests to join it")
    sp.add_argument("--max-batch-tokens", type=POSITIVE, default=4096,
                    help="source tokens (padding included) per model call")
    sp.add_argument("--queue-limit", type=POSITIVE, default=256,
                    help="requests waiting for the model before the server answers 503")
    sp.add_argument("--timeout", type=POSITIVE_FLOAT, default=30.0,
                    help="seconds a request may wait (queue and model) before 504")
    sp.add_argument("--max-sentences", type=POSITIVE, default=64, help="per request (else 413)")
    sp.add_argument("--max-chars", type=POSITIVE, default=2000, help="per sentence (else 413)")
    sp.add_argument("--max-beam", type=POSITIVE, default=16, help="(else 422)")
    sp.add_argument("--max-nbest", type=POSITIVE, default=16, help="(else 422)")
    sp.add_argument("--max-k", type=POSITIVE, default=50, help="alternatives per request (else 422)")
    sp.add_argument("--too-long", choices=["truncate", "skip", "error"], default=None,
                    help="an input longer than the model's limit (default truncate; error: 422)")
    with_glossary(sp)
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("info", help="what a run folder or checkpoint holds: model, vocabulary, "
                        "updates, best scores, config")
    sp.add_argument("path", help="a run folder (runs/x) or a checkpoint (runs/x/best)")
    sp.add_argument("--json", action="store_true", help="everything, as one JSON object")
    sp.set_defaults(fn=cmd_info)

    sp = sub.add_parser("demo", help="generate the numbers corpus, train, translate, score, plot; "
                        "or (--model vit) a Vision Transformer on 8x8 digits")
    sp.add_argument("--model", choices=["rnn", "transformer", "vit"], default="rnn")
    sp.add_argument("--direction", choices=["ko-en", "en-ko"], default="ko-en")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.set_defaults(fn=cmd_demo)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """nmtkit's own warnings as one line each, without Python's file and line."""
    if issubclass(category, NMTKitWarning):
        print(f"nmtkit: warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


class _Terminated(BaseException):
    """SIGTERM as an exception, so that a command's clean-up (its temp folders) runs before exit
    143, as Ctrl-C's KeyboardInterrupt does before exit 130."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # serve drains on SIGTERM itself (uvicorn), and training stops at a checkpoint (its own handler)
    own_sigterm = args.fn is not cmd_serve and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if own_sigterm else None
    try:
        return _run(args)
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """The command, its failures as one line and an exit code."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.fn(args)
    except NMTKitError as err:
        print(f"\nnmtkit: error: {err}" if _bar_open() else f"nmtkit: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:  # the training summary said where it stopped
        done = "after writing a checkpoint" if err.checkpoint_written else "at once (no checkpoint)"
        print(f"nmtkit: stopped by {err.signal_name} {done}; exit {err.exit_code}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("nmtkit: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("nmtkit: stopped by SIGTERM", file=sys.stderr)
        return 143
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except OSError as err:  # a full disk, a read-only folder...: the user's to fix
        print(f"nmtkit: error: {os_error(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("nmtkit: error: out of memory (a smaller model, batch or input helps)", file=sys.stderr)
        return 2
    return 0


def _bar_open() -> bool:
    """Whether a progress bar may have left the cursor mid-line."""
    from tqdm import tqdm

    return bool(getattr(tqdm, "_instances", None))


def _quiet_stdout() -> None:
    """After a closed pipe (`nmtkit translate ... | head`), Python's final flush of stdout
    would fail again and print a traceback: point stdout at nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
