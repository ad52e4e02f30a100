"""glibc's malloc settings (cpu.keep_freed_memory) on and off, in training and in decoding, as
this CPU runs and as an AVX2 one would: does nmtkit's default pay, and where?

    train    a Transformer of configs/multi30k-transformer.yaml's shape (random weights) trained
             on random batches of about --max-tokens tokens, lengths varying as real ones do
             (the output layer and the loss in chunks, backward, clipping, Adam)
    decode   beam 5 with the packed decoder of bench_cpu_paths.py (as the Translator decodes)

mallopt is process-wide and cannot be undone, so every measurement is a fresh process: glibc's
defaults and keep_freed_memory take turns, the fastest of --repeats each. The AVX2 setting runs
those processes with nmtkit.cpu.AVX2_SETTINGS (oneDNN, ATen and MKL held to AVX2). The table
shows each side by side, the speed-up, and whether the settings pay (1.05x or more), cost
(0.95x or less) or are within noise; the last lines say, per task, where nmtkit should take them.

    python benchmarks/bench_malloc.py                       # about 5 min on 2 quiet cores
    python benchmarks/bench_malloc.py --settings avx2 --tasks decode --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # nmtkit from this checkout

from nmtkit.cpu import AVX2_SETTINGS, machine_header  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi30k-transformer.yaml"
LENGTHS = (14, 22, 11, 30, 17, 9, 25, 13)  # target lengths of the batches in turn (Multi30k-like)
PAYS, COSTS = 1.05, 0.95  # speed-ups beyond which the settings pay, or cost


def train_seconds(args: argparse.Namespace) -> float:
    """Seconds for --updates training updates, after 2 that pay one-off costs."""
    import torch

    from nmtkit.config import load_config
    from nmtkit.model import build_model

    cfg = load_config(CONFIG)
    vocab = cfg.vocab.size
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab, vocab).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)

    def update(length: int) -> None:
        rows = args.max_tokens // (length + 1)
        src = torch.randint(4, vocab, (rows, length), generator=g)
        tgt = torch.randint(4, vocab, (rows, length + 1), generator=g)
        loss, _ = model(src, torch.full((rows,), length), tgt[:, :-1], target=tgt[:, 1:], smoothing=0.1)
        (loss / tgt[:, 1:].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for length in LENGTHS[:2]:
        update(length)
    start = time.perf_counter()
    for i in range(args.updates):
        update(LENGTHS[i % len(LENGTHS)])
    return time.perf_counter() - start


def decode_seconds(args: argparse.Namespace) -> float:
    """The fastest of 2 beam-5 decodings of one batch (after one that pays one-off costs)."""
    from bench_cpu_paths import decoders, sentences, time_decoding

    vocab = 8000
    model = decoders(vocab)["packed"]
    batch = sentences(args.sentences, 13, vocab)
    return time_decoding({"packed": model}, batch, 5, args.steps, 2)["packed"]


def worker(args: argparse.Namespace) -> None:
    import torch

    from nmtkit.cpu import keep_freed_memory

    torch.set_num_threads(args.threads)
    if args.worker_malloc == "keep":
        keep_freed_memory()
    seconds = train_seconds(args) if args.worker == "train" else decode_seconds(args)
    print(json.dumps({"seconds": seconds, "header": machine_header()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", choices=["native", "avx2"], default=["native", "avx2"])
    p.add_argument("--tasks", nargs="+", choices=["train", "decode"], default=["train", "decode"])
    p.add_argument("--repeats", type=int, default=2, help="processes per task, setting and malloc mode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--updates", type=int, default=6, help="timed training updates per process")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per training batch (the config's)")
    p.add_argument("--sentences", type=int, default=16, help="sentences per decoded batch")
    p.add_argument("--steps", type=int, default=20, help="decoder steps per sentence")
    p.add_argument("--worker", choices=["train", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--worker-malloc", choices=["keep", "default"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(machine_header())
    print(f"{args.threads} threads; train: {args.updates} updates of about {args.max_tokens} tokens; "
          f"decode: beam 5, {args.sentences} sentences x {args.steps} steps; each a fresh process, "
          f"glibc defaults and keep_freed_memory in turns, the fastest of {args.repeats}")
    forwarded = sys.argv[1:]
    best: dict[tuple[str, str, str], float] = {}
    for setting in args.settings:
        env = {**os.environ, **(AVX2_SETTINGS if setting == "avx2" else {})}
        if setting == "native":
            env = {k: v for k, v in env.items() if k not in AVX2_SETTINGS}
        for task in args.tasks:
            for repeat in range(args.repeats):
                modes = ("default", "keep") if repeat % 2 == 0 else ("keep", "default")
                for mode in modes:
                    out = subprocess.run([sys.executable, __file__, *forwarded, "--worker", task,
                                          "--worker-malloc", mode], capture_output=True, text=True,
                                         env=env)
                    if out.returncode:
                        sys.exit(f"{setting} {task} {mode} failed:\n{out.stderr[-2000:]}")
                    reply = json.loads(out.stdout.strip().splitlines()[-1])
                    key = (setting, task, mode)
                    best[key] = min(reply["seconds"], best.get(key, reply["seconds"]))
                    if repeat == 0 and task == args.tasks[0] and mode == modes[0]:
                        print(f"{setting}: {reply['header']}")
    print("\n| setting | task | glibc defaults (s) | keep_freed_memory (s) | speed-up | verdict |")
    print("|---|---|---:|---:|---:|---|")
    verdicts: dict[str, dict[str, str]] = {task: {} for task in args.tasks}
    for setting in args.settings:
        for task in args.tasks:
            default, keep = best[(setting, task, "default")], best[(setting, task, "keep")]
            ratio = default / keep
            verdict = "pays" if ratio >= PAYS else "costs" if ratio <= COSTS else "within noise"
            verdicts[task][setting] = f"{verdict} ({ratio:.2f}x)"
            print(f"| {setting} | {task} | {default:.2f} | {keep:.2f} | {ratio:.2f}x | {verdict} |")
    print("\nnmtkit takes the settings in training (Trainer.setup) and in the Translator on the CPU "
          "(keep_memory=True), on every CPU. Take them only where they pay:")
    for task, by_setting in verdicts.items():
        said = ", ".join(f"{setting} {v}" for setting, v in by_setting.items())
        costs = [setting for setting, v in by_setting.items() if v.startswith("costs")]
        if costs:
            advice = f"leave them off for {task} on {' and '.join(costs)}"
        elif all(v.startswith("pays") for v in by_setting.values()):
            advice = "keep them"
        else:
            advice = "keep them (no cost measured; they spare page faults, tests/test_cpu.py)"
        print(f"- {task}: {said}: {advice}")

if __name__ == "__main__":
    main()
