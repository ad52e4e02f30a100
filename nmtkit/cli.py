"""The `nmtkit` command. User mistakes end with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from nmtkit.errors import NMTKitError

if TYPE_CHECKING:
    from nmtkit.translator import Translation


def cmd_prepare(args: argparse.Namespace) -> None:
    from nmtkit.config import load_config
    from nmtkit.data import prepare

    cfg = load_config(args.config, args.set)
    data = prepare(cfg.data, cfg.vocab)
    print(f"prepared data in {data.dir}")


def cmd_train(args: argparse.Namespace) -> None:
    from nmtkit.config import load_config
    from nmtkit.training import train

    cfg = load_config(args.config, args.set)
    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"checkpoints in {run_dir} (best: {run_dir / 'best'}, last: {run_dir / 'last'})")


def _read_ahead(stream: TextIO, lines: queue.Queue) -> None:
    """The reader thread: every input line into the queue, then None (or the error that stopped it)."""
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)
    except Exception as err:  # e.g. UnicodeDecodeError: raised again on the main thread
        lines.put(err)


def _arriving_lines(stream: TextIO, max_lines: int) -> Iterator[list[str]]:
    """Input lines in groups of whatever has arrived (1 to max_lines) when the translator is ready.

    A thread reads ahead. A file or a fast pipe arrives quicker than it is translated, so groups
    are large and batch well; a person typing (or a program waiting for each answer) gets every
    line translated as soon as it is entered."""
    lines: queue.Queue = queue.Queue(maxsize=4 * max_lines)  # bounded: a huge input is streamed
    threading.Thread(target=_read_ahead, args=(stream, lines), daemon=True).start()
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
    options = {"beam": args.beam, "length_penalty": args.length_penalty}
    if getattr(args, "sample", False):
        options.update(sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return options


def _jsonl(translation: Translation) -> dict[str, object]:
    return {"translation": translation.text, "score": translation.score, "tokens": translation.tokens}


def cmd_translate(args: argparse.Namespace) -> None:
    import io
    import json

    import torch

    from nmtkit.translator import Translator

    translator = Translator.load(args.checkpoint, args.device, quantize=args.quantize)
    options = _search_options(args)
    if args.sample:  # one generator for the whole stream: a seed fixes every sample in it
        generator = torch.Generator(translator.device)
        if args.seed is None:
            generator.seed()
        else:
            generator.manual_seed(args.seed)
        options["seed"] = generator
    details = args.output_format == "jsonl" or args.nbest > 1
    if args.input:
        if not Path(args.input).is_file():
            raise NMTKitError(f"file not found: {args.input}")
        stream: TextIO = open(args.input, encoding="utf-8")  # noqa: SIM115
    elif hasattr(sys.stdin, "buffer"):  # strict UTF-8 (not the locale's escapes for bad bytes)
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    else:
        stream = sys.stdin
    out = sys.stdout
    try:
        for lines in _arriving_lines(stream, args.chunk_lines):
            results = translator.translate(lines, args.batch_tokens, return_details=details,
                                           attention=False, nbest=args.nbest, **options)
            for result in results:
                if args.output_format == "jsonl":  # one object per input line
                    record = _jsonl(result)
                    if args.nbest > 1:
                        record["nbest"] = [_jsonl(alt) for alt in result.nbest]
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                elif args.nbest > 1:  # n lines per input line, best first (empty if fewer found)
                    texts = [alt.text for alt in result.nbest]
                    out.write("".join(t + "\n" for t in texts + [""] * (args.nbest - len(texts))))
                else:
                    out.write(result + "\n")
            out.flush()
    except UnicodeDecodeError:
        raise NMTKitError(f"{args.input or 'standard input'}: not valid UTF-8") from None
    finally:
        if args.input:
            stream.close()


def cmd_evaluate(args: argparse.Namespace) -> None:
    from nmtkit.data import read_parallel
    from nmtkit.metrics import score
    from nmtkit.translator import Translator

    src, ref = read_parallel(Path(args.src), Path(args.ref))  # exist, UTF-8, same line count
    translator = Translator.load(args.checkpoint, args.device, quantize=args.quantize)
    hyps = translator.translate(src, batch_tokens=args.batch_tokens, **_search_options(args))
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(score(hyps, ref, args.tokenize))


def transformer_attention(translator, source: str, pieces: list[str], layer: int | None,
                          head: int | None) -> list[list[float]]:
    """Cross-attention of one Transformer layer (default: the last) and head (default: the
    mean of all heads), from a teacher-forced pass over the translation."""
    import torch

    from nmtkit.data import collate_source
    from nmtkit.vocabulary import BOS_ID

    model = translator.model
    decoder = model.decoder
    n_layers, n_heads = len(decoder.layers), decoder.layers[0].cross_attn.heads
    if layer is not None and not 0 <= layer < n_layers:
        raise NMTKitError(f"--layer {layer}: the decoder has layers 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise NMTKitError(f"--head {head}: the decoder has heads 0..{n_heads - 1}")
    src, lengths = collate_source([translator.src_tok.encode(source)])
    tgt_ids = [translator.tgt_tok.sp.piece_to_id(p) for p in pieces]
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])
    decoder.keep_all_attention = True
    try:
        with torch.inference_mode():
            model(src.to(translator.device), lengths.to(translator.device), tgt_in.to(translator.device))
        weights = decoder.last_cross_attention[-1 if layer is None else layer][0]  # (heads, T, S)
    finally:
        decoder.keep_all_attention = False
    chosen = weights.mean(0) if head is None else weights[head]  # (T, S)
    return chosen.float().cpu().tolist()


def cmd_plot_attention(args: argparse.Namespace) -> None:
    from nmtkit.plotting import plot_attention
    from nmtkit.translator import Translator

    translator = Translator.load(args.checkpoint, args.device)
    (result,) = translator.translate([args.sentence], return_details=True)
    if result.attention is None:
        raise NMTKitError(f"{args.checkpoint}: this model has no attention (model.attention: none)")
    attention, title = result.attention, result.text
    if translator.ckpt.config.model.type == "transformer":
        attention = transformer_attention(translator, args.sentence, result.tokens, args.layer,
                                          args.head)
        title += (f"\nlayer {'last' if args.layer is None else args.layer}, "
                  f"{'mean of heads' if args.head is None else f'head {args.head}'}")
    elif args.layer is not None or args.head is not None:
        raise NMTKitError("--layer/--head apply to Transformer checkpoints only")
    out = plot_attention(attention, result.source_tokens, result.tokens + ["</s>"],
                         Path(args.out), title=title)
    print(f"{result.text}\nwrote {out}")


def cmd_plot_curves(args: argparse.Namespace) -> None:
    from nmtkit.plotting import plot_curves
    from nmtkit.training import load_log

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "curves.png"
    plot_curves(load_log(run_dir), out, title=str(run_dir))
    print(f"wrote {out}")


def cmd_average(args: argparse.Namespace) -> None:
    from nmtkit.checkpoint import average_checkpoints

    out = average_checkpoints([Path(p) for p in args.checkpoints], Path(args.out))
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from nmtkit.demo import run_demo

    run_demo(model=args.model, direction=args.direction, overrides=args.set)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmtkit", description="Neural machine translation toolkit.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="YAML config file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.hidden_size=512")

    sp = sub.add_parser("prepare", help="validate, learn subwords, binarize the corpus")
    with_config(sp)
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="train a model (prepares the data first if needed)")
    with_config(sp)
    sp.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    sp.set_defaults(fn=cmd_train)

    def with_ckpt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/x/best")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--batch-tokens", type=int, default=None)

    def with_decoding(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--beam", type=int, default=None,
                        help="beam size, 1 = greedy (default: the config's decoding.beam)")
        sp.add_argument("--length-penalty", type=float, default=None,
                        help="GNMT length penalty alpha, 0 = none (default: the config's)")
        sp.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 dynamic quantization of the linear layers (CPU)")

    sp = sub.add_parser("translate", help="translate stdin (or --input) to stdout, line by line")
    sp.add_argument("--checkpoint", required=True, action="append",
                    help="checkpoint folder, e.g. runs/x/best; give it several times to ensemble")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--batch-tokens", type=int, default=None,
                    help="source tokens per batch (default: the config's decoding.batch_tokens)")
    sp.add_argument("--input", help="read this file instead of stdin")
    sp.add_argument("--chunk-lines", type=int, default=2000, help="most lines read per batch round")
    with_decoding(sp)
    sp.add_argument("--nbest", type=int, default=1,
                    help="output the N best (beam) or N samples per input line")
    sp.add_argument("--sample", action="store_true", help="sample each token (instead of --beam)")
    sp.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    sp.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    sp.add_argument("--top-p", type=float, default=1.0, help="sample from the nucleus of mass p")
    sp.add_argument("--seed", type=int, default=None, help="seed for --sample")
    sp.add_argument("--output-format", choices=["text", "jsonl"], default="text",
                    help="jsonl: {translation, score, tokens[, nbest]} per input line")
    sp.set_defaults(fn=cmd_translate)

    sp = sub.add_parser("evaluate", help="sacreBLEU BLEU and chrF of translations of --src")
    with_ckpt(sp)
    with_decoding(sp)
    sp.add_argument("--src", required=True)
    sp.add_argument("--ref", required=True)
    sp.add_argument("--output", help="also write the translations here")
    sp.add_argument("--tokenize", default=None, help="sacreBLEU tokenizer (default 13a)")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("plot-attention", help="attention heatmap of one sentence")
    with_ckpt(sp)
    sp.add_argument("--sentence", required=True)
    sp.add_argument("--out", required=True, help="PNG file to write")
    sp.add_argument("--layer", type=int, default=None, help="Transformer: decoder layer (default last)")
    sp.add_argument("--head", type=int, default=None, help="Transformer: head (default mean of heads)")
    sp.set_defaults(fn=cmd_plot_attention)

    sp = sub.add_parser("plot-curves", help="training/validation curves of a run as PNG")
    sp.add_argument("run_dir")
    sp.add_argument("--out", default=None, help="PNG file (default RUN_DIR/curves.png)")
    sp.set_defaults(fn=cmd_plot_curves)

    sp = sub.add_parser("average", help="average the weights of several checkpoints")
    sp.add_argument("checkpoints", nargs="+", help="checkpoint folders of one architecture")
    sp.add_argument("--out", required=True, help="folder of the averaged checkpoint")
    sp.set_defaults(fn=cmd_average)

    sp = sub.add_parser("demo", help="generate the numbers corpus, train, translate, score, plot")
    sp.add_argument("--model", choices=["rnn", "transformer"], default="rnn")
    sp.add_argument("--direction", choices=["ko-en", "en-ko"], default="ko-en")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except NMTKitError as err:
        print(f"nmtkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nmtkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
