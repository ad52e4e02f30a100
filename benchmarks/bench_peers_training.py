"""Training side by side with the peers, on this machine: target tokens/s, peak memory, and test
BLEU after the same wall-clock budget.

    make peers      # .venv-peers/{hf,joey,onmt}: each peer in a virtual environment of its own
    python benchmarks/bench_peers_training.py --data ../shared/data/multi30k --minutes 30

Every system trains the same model on the same data: Multi30k En->De, the joint sentencepiece
BPE 8000 model that `nmtkit prepare` learnt for configs/multi30k-transformer.yaml (the peers
read its pieces, so all four see the same subwords), a pre-norm Transformer 3+3 layers, d_model
256, 4 heads, ff 1024, tied embeddings (Marian's is post-norm), fp32, batches of about 4096
tokens, AdamW/Adam at the same peak learning rate with 300 warm-up updates, label smoothing
0.1, 2 threads. Each trains for --minutes of wall time, its own validation included, then
translates test2016 with beam 5 from its last weights. Joey NMT and OpenNMT-py have no time
limit: they are stopped at the deadline and their newest checkpoint is used (both save one every
100 updates; Joey NMT's comes with its greedy validation on 200 valid sentences, nmtkit
validates every 50 updates, the Hugging Face loop and OpenNMT-py not at all). BLEU is computed
here with sacreBLEU for all.

    nmtkit        configs/multi30k-transformer.yaml with precision fp32 (training.max_minutes)
    transformers  MarianMTModel in a plain PyTorch loop (benchmarks/peers/marian_train.py)
    transformers-eager  the same with attn_implementation="eager" (its own unfused attention
                  instead of SDPA's fused kernel; not in the default --systems)
    joeynmt       Joey NMT 2.3 (`python -m joeynmt train`, then `test`)
    opennmt       OpenNMT-py 3.5.1 (`onmt_train`, then `onmt_translate`)

Target tokens/s is the median of each system's own log over the run; peak RSS is the training
process's (kernel accounting, wait4). Runs go under --runs; a system whose run finished is
not trained again. --speed-only trains without validation and skips the test translation: the
throughput and memory columns in a few minutes per system. --precision bf16 trains nmtkit and
the Hugging Face loop under bf16 autocast instead (the shipped configs' default; Joey NMT and
OpenNMT-py have no bf16 training on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from nmtkit.cpu import machine_header
from nmtkit.metrics import score
from nmtkit.vocabulary import Tokenizer

HERE = Path(__file__).parent
LR, WARMUP, MAX_TOKENS = 0.0015, 300, 4096
PEERS = {"transformers": "hf", "transformers-eager": "hf", "joeynmt": "joey", "opennmt": "onmt"}  # -> venv
BF16 = {"nmtkit", "transformers", "transformers-eager"}  # the systems that train in bf16 on a CPU


def run_timed(cmd: list[str], log: Path, deadline_s: float | None = None,
              env: dict[str, str] | None = None) -> float:
    """Run cmd (output to log); stop it with SIGINT at the deadline. Returns its peak RSS in GB.

    A run that fails on its own, before any deadline, ends the benchmark: its numbers would be
    an earlier run's or none."""
    start = time.monotonic()
    stopped = False
    kill_at = float("inf")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not stopped and deadline_s is not None and time.monotonic() - start > deadline_s:
                os.killpg(proc.pid, signal.SIGINT)
                stopped, kill_at = True, time.monotonic() + 60
            elif time.monotonic() > kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(1)
    code = os.waitstatus_to_exitcode(status)
    if not stopped and code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
        sys.exit(f"{cmd[0]} failed (exit {code}); see {log}:\n" + "\n".join(tail))
    return usage.ru_maxrss / 1024**2


def train_once(marker: Path, cmd: list[str], log: Path, deadline_s: float | None = None,
               env: dict[str, str] | None = None) -> float:
    """run_timed, unless `marker` says this training was done: a re-run of the benchmark goes on
    with the systems not yet trained. Returns the training's peak RSS in GB."""
    if not marker.exists():
        marker.write_text(json.dumps({"peak_rss_gb": run_timed(cmd, log, deadline_s, env)}))
    return json.loads(marker.read_text())["peak_rss_gb"]


def nmtkit_run(args: argparse.Namespace, data_overrides: list[str]) -> dict:
    run = args.runs / "nmtkit"
    cmd = [sys.executable, "-m", "nmtkit.cli", "train", "configs/multi30k-transformer.yaml",
           f"--set=training.precision={args.precision}", f"--set=training.max_minutes={args.minutes}",
           f"--set=training.out_dir={run}", "--set=training.early_stopping.patience=0",
           # the recipe all four share, whatever the shipped config says now
           "--set=training.optimizer=adamw", "--set=training.schedule=noam", f"--set=training.lr={LR}",
           f"--set=training.warmup_steps={WARMUP}", "--set=training.ema_decay=0",
           f"--set=training.valid_every={1000000 if args.speed_only else 50}",
           f"--set=training.log_every={args.log_every}",
           *[f"--set={o}" for o in data_overrides]]
    if (run / "last").exists():
        cmd.append("--resume")
    rss = train_once(args.runs / "nmtkit.trained.json", cmd, args.runs / "nmtkit.log")
    from nmtkit.training import load_log
    from nmtkit.translator import Translator

    log = load_log(run)
    speeds = [r["tokens_per_s"] for r in log if r["type"] == "train"]
    hyps = None if args.speed_only else Translator.load(run / "last").translate(
        read(args.data / "test2016.en"), beam=5)
    return {"updates": max(r["step"] for r in log), "tokens_per_s": middle(speeds),
            "peak_rss_gb": max([rss] + [r.get("peak_rss_gb", 0) for r in log]), "hyps": hyps}


def marian_run(args: argparse.Namespace, spm_model: Path, attention: str = "sdpa") -> dict:
    name = "transformers" if attention == "sdpa" else f"transformers-{attention}"
    out = args.runs / name
    if not (out / "result.json").exists() or not (args.speed_only or (out / "test.hyp").exists()):
        python = args.hf_python or args.venvs / "hf" / "bin" / "python"
        run_timed([str(python), str(HERE / "peers" / "marian_train.py"), "--spm", str(spm_model), "--data",
                   str(args.data), "--out", str(out), "--minutes", str(args.minutes), "--lr", str(LR),
                   "--warmup", str(WARMUP), "--max-tokens", str(MAX_TOKENS), "--precision", args.precision,
                   "--attention", attention, "--log-every", str(args.log_every),
                   *(["--no-test"] if args.speed_only else [])],
                  args.runs / f"{name}.log")
    result = json.loads((out / "result.json").read_text())
    speeds = [json.loads(line)["tokens_per_s"] for line in (out / "log.jsonl").read_text().splitlines()]
    return {"updates": result["updates"], "tokens_per_s": middle(speeds),
            "peak_rss_gb": result["peak_rss_gb"], "hyps": None if args.speed_only else read(out / "test.hyp")}


def write_vocab(spm_model: Path, out: Path, skip: tuple[str, ...] = ()) -> Path:
    """The sentencepiece pieces in id order, one per line: the peers' vocabulary files."""
    pieces = [p for p in Tokenizer(spm_model).vocab() if p not in skip]
    out.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return out


def joey_run(args: argparse.Namespace, spm_model: Path) -> dict:
    out = args.runs / "joeynmt"
    work = args.runs / "joeynmt-data"
    work.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("dev", "valid"), ("test", "test2016")):
        for lang in ("en", "de"):
            lines = read(args.data / f"{name}.{lang}")
            # its greedy validation re-runs the whole prefix each step: 200 sentences keep it short
            (work / f"{split}.{lang}").write_text("\n".join(lines[:200] if split == "dev" else lines) + "\n",
                                                  encoding="utf-8")
    vocab = write_vocab(spm_model, work / "vocab.txt")
    side = {"level": "bpe", "voc_file": str(vocab), "tokenizer_type": "sentencepiece",
            "tokenizer_cfg": {"model_file": str(spm_model)}, "max_length": 80}
    layers = {"type": "transformer", "num_layers": 3, "num_heads": 4, "hidden_size": 256, "ff_size": 1024,
              "dropout": 0.1, "layer_norm": "pre", "embeddings": {"embedding_dim": 256, "scale": True}}
    cfg = {
        "name": "multi30k", "joeynmt_version": "2.3.0", "model_dir": str(out), "use_cuda": False,
        "data": {"train": str(work / "train"), "dev": str(work / "dev"), "test": str(work / "test"),
                 "dataset_type": "plain", "src": {"lang": "en", **side}, "trg": {"lang": "de", **side}},
        "testing": {"beam_size": 5, "alpha": 1.0, "batch_size": 64, "batch_type": "sentence",
                    "eval_metrics": ["bleu"], "max_output_length": 100},
        "training": {"validation_freq": 1000000 if args.speed_only else 100,
                     "optimizer": "adamw", "adam_betas": [0.9, 0.98], "weight_decay": 0.0001,
                     "learning_rate": LR, "scheduling": "warmupinversesquareroot",
                     "learning_rate_warmup": WARMUP, "label_smoothing": 0.1, "loss": "crossentropy",
                     "batch_size": MAX_TOKENS, "batch_type": "token", "eval_batch_size": 64,
                     "eval_batch_type": "sentence", "epochs": 1000,
                     "logging_freq": 50, "clip_grad_norm": 1.0, "shuffle": True, "overwrite": True,
                     "keep_best_ckpts": -1, "early_stopping_metric": "bleu", "random_seed": 1,
                     "num_workers": 0},
        "model": {"initializer": "xavier_uniform", "embed_initializer": "xavier_uniform",
                  "tied_embeddings": True, "tied_softmax": True, "encoder": layers,
                  "decoder": layers},
    }
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    python = str(args.venvs / "joey" / "bin" / "python")
    main = [python, str(HERE / "peers" / "joey_main.py")]
    rss = train_once(work / "trained", [*main, "train", str(config), "--skip-test"],
                     args.runs / "joeynmt.log",
                     deadline_s=args.minutes * 60, env={"OMP_NUM_THREADS": "2"})
    text = (out / "train.log").read_text(encoding="utf-8")
    speeds = [float(x) for x in re.findall(r"Tokens per Sec:\s+(\d+)", text)]
    steps = [int(x) for x in re.findall(r"Step:\s+(\d+)", text)]
    result = {"updates": max(steps), "tokens_per_s": middle(speeds), "peak_rss_gb": rss, "hyps": None}
    if args.speed_only:
        return result
    newest = max(out.glob("[0-9]*.ckpt"), key=lambda p: int(p.stem))
    cfg["testing"]["load_model"] = str(newest)
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    subprocess.run([*main, "test", str(config), "--output-path", str(work / "hyp")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {**result, "hyps": read(work / "hyp.test")}


def onmt_run(args: argparse.Namespace, spm_model: Path) -> dict:
    out = args.runs / "opennmt"
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(spm_model, out / "vocab.txt", skip=("<pad>",))  # OpenNMT-py adds <blank>
    # its noam: lr * d^-0.5 * min(step^-0.5, step * warmup^-1.5): the same peak as ours at WARMUP
    noam_lr = LR / (256**-0.5 * WARMUP**-0.5)
    cfg = {
        "data": {"corpus_1": {"path_src": str(args.data / "train.en"),
                              "path_tgt": str(args.data / "train.de")},
                 "valid": {"path_src": str(args.data / "valid.en"),
                           "path_tgt": str(args.data / "valid.de")}},
        "src_vocab": str(vocab), "tgt_vocab": str(vocab), "share_vocab": True,
        "transforms": ["sentencepiece", "filtertoolong"], "src_subword_model": str(spm_model),
        "tgt_subword_model": str(spm_model), "src_seq_length": 80, "tgt_seq_length": 80,
        "save_model": str(out / "model"),
        "save_checkpoint_steps": 1000000 if args.speed_only else 100, "keep_checkpoint": 2,
        "encoder_type": "transformer", "decoder_type": "transformer", "enc_layers": 3, "dec_layers": 3,
        "hidden_size": 256, "word_vec_size": 256, "transformer_ff": 1024, "heads": 4,
        "position_encoding": True, "share_embeddings": True, "share_decoder_embeddings": True,
        "dropout": [0.1], "attention_dropout": [0.0], "param_init": 0.0, "param_init_glorot": True,
        "batch_type": "tokens", "batch_size": MAX_TOKENS, "valid_batch_size": 64, "train_steps": 1000000,
        "valid_steps": 1000000, "optim": "adam", "adam_beta2": 0.98, "decay_method": "noam",
        "warmup_steps": WARMUP, "learning_rate": noam_lr, "label_smoothing": 0.1, "max_grad_norm": 1.0,
        "report_every": 50, "seed": 1, "num_workers": 0, "model_dtype": "fp32", "world_size": 1,
        # examples read per bucket before batching: about one pass (the default 262,144 reads a
        # small corpus nine times over)
        "bucket_size": len(read(args.data / "train.en")),
        "gpu_ranks": [],
    }
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    bin_dir = args.venvs / "onmt" / "bin"
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "2"}
    rss = train_once(out / "trained.json", [str(bin_dir / "onmt_train"), "-config", str(config)],
                     args.runs / "opennmt.log",
                     deadline_s=args.minutes * 60, env=env)
    text = (args.runs / "opennmt.log").read_text(encoding="utf-8", errors="replace")
    speeds = [float(x) for x in re.findall(r"(\d+)\s*tok/s", text)]
    steps = [int(x) for x in re.findall(r"Step (\d+)/", text)]
    result = {"updates": max(steps), "tokens_per_s": middle(speeds), "peak_rss_gb": rss, "hyps": None}
    if args.speed_only:
        return result
    newest = max(out.glob("model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    subprocess.run([str(bin_dir / "onmt_translate"), "-model", str(newest),
                    "-src", str(args.data / "test2016.en"),
                    "-output", str(out / "test.hyp"), "-beam_size", "5", "-batch_size", "64",
                    "-transforms", "sentencepiece", "-src_subword_model", str(spm_model),
                    "-tgt_subword_model", str(spm_model)], check=True, env={**os.environ, **env},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {**result, "hyps": read(out / "test.hyp")}


def middle(speeds: list[float]) -> float:
    """The median speed, leaving out the first window (it pays the start-up)."""
    return statistics.median(speeds[1:] or speeds) if speeds else float("nan")


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    p.add_argument("--runs", type=Path, default=Path("runs/peers"))
    p.add_argument("--venvs", type=Path, default=Path(".venv-peers"), help="where make peers put them")
    p.add_argument("--hf-python", type=Path,
                   help="a Python with transformers for the Hugging Face loop (default: --venvs' hf)")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--speed-only", action="store_true", help="no validation, no test translation")
    p.add_argument("--systems", nargs="+", default=["nmtkit", "transformers", "joeynmt", "opennmt"],
                   choices=["nmtkit", *PEERS])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: nmtkit and transformers only, under torch.autocast")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="nmtkit config overrides (also for the shared subword model: data.*, vocab.*)")
    p.add_argument("--log-every", type=int, default=50,
                   help="updates per speed window in each system's log (the median of the windows, "
                        "all but the first, is the figure; lower it for short runs)")
    p.add_argument("--json", type=Path, help="also write the results here (benchmarks/avx2_columns.py)")
    args = p.parse_args()
    print(machine_header())
    if args.precision == "bf16" and set(args.systems) - BF16:
        p.error(f"--precision bf16 is for --systems {' '.join(sorted(BF16))} (the others train in fp32 "
                "on a CPU)")
    if not (args.data / "test2016.de").is_file():
        print(f"skipped: no Multi30k at {args.data} (give --data)")
        return
    args.runs.mkdir(parents=True, exist_ok=True)
    files = {"train": "train", "valid": "valid", "test": "test2016"}
    data_overrides = [f"data.{split}_{side}={args.data / f'{name}.{lang}'}" for split, name in files.items()
                      for side, lang in (("src", "en"), ("tgt", "de"))] + args.set
    # the shared subword model: what nmtkit prepares for the config (prepare is a no-op if done)
    subprocess.run([sys.executable, "-m", "nmtkit.cli", "prepare", "configs/multi30k-transformer.yaml",
                    *[f"--set={o}" for o in data_overrides]], check=True, stdout=subprocess.DEVNULL)
    from nmtkit.config import load_config

    prepared = load_config("configs/multi30k-transformer.yaml", data_overrides).data.out_dir
    spm_model = Path(prepared) / "spm.model"
    runners = {"nmtkit": lambda: nmtkit_run(args, data_overrides),
               "transformers": lambda: marian_run(args, spm_model),
               "transformers-eager": lambda: marian_run(args, spm_model, "eager"),
               "joeynmt": lambda: joey_run(args, spm_model), "opennmt": lambda: onmt_run(args, spm_model)}
    refs = read(args.data / "test2016.de")
    results = {}
    for system in args.systems:
        hf_given = PEERS.get(system) == "hf" and args.hf_python
        if system != "nmtkit" and not hf_given and not (args.venvs / PEERS[system]).is_dir():
            print(f"{system}: not installed (make peers); skipped", file=sys.stderr)
            continue
        print(f"{system}: training for {args.minutes:g} minutes", file=sys.stderr, flush=True)
        results[system] = runners[system]()
    hf = results.get("transformers", {}).get("tokens_per_s")
    print(f"\nMulti30k En->De, Transformer 3+3 d_model 256, {args.precision}, 2 threads, "
          f"{args.minutes:g} minutes of training each; test2016, beam 5\n")
    print("| system | updates | target tokens/s | vs transformers | peak RSS GB | test BLEU | lowercased "
          "| chrF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for system, r in results.items():
        ratio = f"{r['tokens_per_s'] / hf:.2f}x" if hf else ""
        scores = ""
        if r["hyps"] is not None:
            s = score(r["hyps"], refs)
            scores = f"{s.bleu:.2f} | {s.bleu_lowercase:.2f} | {s.chrf:.2f}"
        print(f"| {system} | {r['updates']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['peak_rss_gb']:.2f} | "
              f"{scores or ' |  | '} |")
    if args.json:
        args.json.write_text(json.dumps({system: {k: v for k, v in r.items() if k != "hyps"}
                                         for system, r in results.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
