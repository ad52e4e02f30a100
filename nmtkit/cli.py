"""The `nmtkit` command. User mistakes end with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from nmtkit.errors import NMTKitError


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise NMTKitError(f"file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise NMTKitError(f"{path}: line {line} is not valid UTF-8") from None


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
    print(f"checkpoints in {run_dir} (best: {run_dir / 'best'}, last: {run_dir / 'last'})")


def _chunks(stream: TextIO, size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in stream:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_translate(args: argparse.Namespace) -> None:
    from nmtkit.translator import Translator

    translator = Translator.load(args.checkpoint, args.device)
    if args.input:
        if not Path(args.input).is_file():
            raise NMTKitError(f"file not found: {args.input}")
        stream: TextIO = open(args.input, encoding="utf-8")  # noqa: SIM115
    else:
        stream = sys.stdin
    # interactive use gets a line back per line typed; pipes are translated in large chunks
    chunk = 1 if stream.isatty() else args.chunk_lines
    try:
        for lines in _chunks(stream, chunk):
            for out in translator.translate(lines, batch_tokens=args.batch_tokens):
                sys.stdout.write(out + "\n")
            sys.stdout.flush()
    except UnicodeDecodeError:
        raise NMTKitError(f"{args.input or 'standard input'}: not valid UTF-8") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def cmd_evaluate(args: argparse.Namespace) -> None:
    from nmtkit.metrics import score
    from nmtkit.translator import Translator

    src = _read_lines(Path(args.src))
    ref = _read_lines(Path(args.ref))
    if len(src) != len(ref):
        raise NMTKitError(f"{args.src} has {len(src)} lines but {args.ref} has {len(ref)} lines")
    translator = Translator.load(args.checkpoint, args.device)
    hyps = translator.translate(src, batch_tokens=args.batch_tokens)
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(score(hyps, ref, args.tokenize))


def cmd_plot_attention(args: argparse.Namespace) -> None:
    from nmtkit.plotting import plot_attention
    from nmtkit.translator import Translator

    translator = Translator.load(args.checkpoint, args.device)
    (result,) = translator.translate([args.sentence], return_details=True)
    if result.attention is None:
        raise NMTKitError(f"{args.checkpoint}: this model has no attention (model.attention: none)")
    out = plot_attention(result.attention, result.source_tokens, result.tokens + ["</s>"],
                         Path(args.out), title=result.text)
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

    sp = sub.add_parser("translate", help="translate stdin (or --input) to stdout, line by line")
    with_ckpt(sp)
    sp.add_argument("--input", help="read this file instead of stdin")
    sp.add_argument("--chunk-lines", type=int, default=2000, help="lines read per batch round")
    sp.set_defaults(fn=cmd_translate)

    sp = sub.add_parser("evaluate", help="sacreBLEU BLEU and chrF of translations of --src")
    with_ckpt(sp)
    sp.add_argument("--src", required=True)
    sp.add_argument("--ref", required=True)
    sp.add_argument("--output", help="also write the translations here")
    sp.add_argument("--tokenize", default=None, help="sacreBLEU tokenizer (default 13a)")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("plot-attention", help="attention heatmap of one sentence")
    with_ckpt(sp)
    sp.add_argument("--sentence", required=True)
    sp.add_argument("--out", required=True, help="PNG file to write")
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
