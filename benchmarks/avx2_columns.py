"""The README's key figures as this CPU runs them and as an AVX2 one would, in one table with
both columns: decoding against Hugging Face and CTranslate2, training against Hugging Face, and
the demo's time.

    decoding  bench_decoding.py --beams 5 --batch1-sentences 0: beam 5, a batch of 64, nmtkit
              fp32 and int8 against transformers and CTranslate2 (sentences/s, and the ratios)
    training  bench_peers_training.py --speed-only --systems nmtkit transformers: the Multi30k
              Transformer in fp32 against the Hugging Face loop, target tokens/s (needs
              ../shared/data/multi30k, or --data)
    demo      `nmtkit demo` (the LSTM, ko-en) cut to --demo-updates updates, data and the test
              translation included; --demo-updates 0 is the whole demo, to its quality target

Each part runs in processes of its own, once with the environment as it is (any AVX2 limits
taken out: "native") and once with nmtkit.cpu.AVX2_SETTINGS (ATen, oneDNN, MKL and CTranslate2
held to AVX2), the two runs of a part one after the other, so read the ratios beside each other.
The peers come from --peers-python (default: .venv-peers/hf, as `make peers` makes it, else this
Python if it has transformers and ctranslate2); a missing peer leaves its rows empty. Each
part's output and a results.json go to --out.

    python benchmarks/avx2_columns.py                          # about 14 min on 2 quiet cores (estimated)
    python benchmarks/avx2_columns.py --parts demo --demo-updates 0   # the whole demo, twice
    python benchmarks/avx2_columns.py --quick                  # tiny settings: does it run?
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # nmtkit from this checkout

from nmtkit.cpu import AVX2_SETTINGS  # noqa: E402

SETTINGS = ("native", "avx2")


def environment(setting: str) -> dict[str, str]:
    """This process's environment as the setting has it, nmtkit from this checkout first."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_SETTINGS}
    if setting == "avx2":
        env.update(AVX2_SETTINGS)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run(cmd: list[str], setting: str, log: Path, cwd: Path = ROOT) -> float:
    """Run a part's command (its output to log); seconds of wall time. A failure ends the script."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=cwd, env=environment(setting), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({setting}); its output: {log}")
    return time.perf_counter() - start


def peers_python(given: str | None) -> str:
    if given:
        return given
    venv = ROOT / ".venv-peers" / "hf" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def decoding(args: argparse.Namespace, setting: str) -> dict[str, float]:
    """Sentences/s of each system at beam 5, batch --sentences (medians)."""
    out = args.out / f"decoding-{setting}.json"
    cmd = [peers_python(args.peers_python), str(ROOT / "benchmarks" / "bench_decoding.py"), "--beams", "5",
           "--batch1-sentences", "0", "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--sentences", str(args.sentences), "--steps", str(args.steps), "--json", str(out)]
    run(cmd, setting, args.out / f"decoding-{setting}.log")
    return {row["system"]: row["sentences_per_s"] for row in json.loads(out.read_text())}


def training(args: argparse.Namespace, setting: str) -> dict[str, float]:
    """Target tokens/s of nmtkit and the Hugging Face loop ({} without the data)."""
    out = args.out / f"training-{setting}.json"
    runs = args.out / f"training-{setting}"
    shutil.rmtree(runs, ignore_errors=True)  # a finished run would not be trained again
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_peers_training.py"), "--speed-only",
           "--minutes", str(args.train_minutes), "--systems", "nmtkit", "transformers",
           "--runs", str(runs), "--data", str(args.data), "--log-every", str(args.log_every),
           "--hf-python", peers_python(args.peers_python), "--json", str(out),
           "--set", "training.num_threads=2"]  # as the Hugging Face loop (marian_train.py)
    run(cmd, setting, args.out / f"training-{setting}.log")
    if not out.exists():  # no Multi30k: the script said so in its log
        return {}
    return {system: r["tokens_per_s"] for system, r in json.loads(out.read_text()).items()}


def demo(args: argparse.Namespace, setting: str) -> dict[str, float]:
    """The demo's wall time in minutes, its updates and its test BLEU, run in a folder of its
    own (the demo writes demo-data/ and runs/ where it runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "configs").mkdir()
        shutil.copy(ROOT / "configs" / "demo.yaml", Path(tmp) / "configs" / "demo.yaml")
        cmd = [sys.executable, "-m", "nmtkit.cli", "demo", "--set", f"training.num_threads={args.threads}"]
        if args.demo_updates:
            cmd += ["--set", f"training.max_steps={args.demo_updates}"]
        log = args.out / f"demo-{setting}.log"
        seconds = run(cmd, setting, log, cwd=Path(tmp))
        rows = (Path(tmp) / "runs" / "demo-rnn-ko-en" / "log.jsonl").read_text().splitlines()
        updates = max(json.loads(row)["step"] for row in rows)
    bleu = re.search(r"^BLEU = ([\d.]+)", log.read_text(), re.MULTILINE)  # the test set's, cased
    return {"minutes": seconds / 60, "updates": updates,
            "bleu": float(bleu.group(1)) if bleu else float("nan")}


def known(x: float | None) -> bool:
    """A figure was measured (a run too short for a speed window gives NaN)."""
    return x is not None and not math.isnan(x)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if known(a) and known(b) and b else None


def rows(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace
         ) -> list[tuple[str, str, dict[str, float | None], str, bool]]:
    """(part, figure, {setting: value}, format, whether avx2 / native means something)."""
    out = []
    if "decoding" in results:
        d = results["decoding"]
        part = f"decoding, beam 5, batch {args.sentences}"
        for dtype in ("fp32", "int8"):
            mine = {s: d[s].get(f"nmtkit {dtype}") for s in d}
            out.append((part, f"nmtkit {dtype}, sentences/s", mine, "{:.1f}", True))
            for peer in ("transformers", "ctranslate2"):
                out.append((part, f"nmtkit {dtype} vs {peer} {dtype}",
                            {s: ratio(mine[s], d[s].get(f"{peer} {dtype}")) for s in d}, "{:.2f}x", False))
    if "training" in results:
        t = results["training"]
        part = "training, Multi30k Transformer fp32"
        for system in ("nmtkit", "transformers"):
            out.append((part, f"{system}, target tokens/s", {s: t[s].get(system) for s in t}, "{:,.0f}",
                        True))
        out.append((part, "nmtkit vs transformers",
                    {s: ratio(t[s].get("nmtkit"), t[s].get("transformers")) for s in t}, "{:.2f}x", False))
    if "demo" in results:
        m = results["demo"]
        part = "demo (LSTM, ko-en), " + (f"{args.demo_updates} updates" if args.demo_updates
                                          else "to its quality target")
        out.append((part, "minutes, data and test translation included",
                    {s: m[s]["minutes"] for s in m}, "{:.2f}", True))
        if not args.demo_updates:
            out.append((part, "updates", {s: m[s]["updates"] for s in m}, "{:.0f}", True))
        out.append((part, "test BLEU", {s: m[s]["bleu"] for s in m}, "{:.1f}", False))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=["decoding", "training", "demo"],
                   default=["decoding", "training", "demo"])
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--out", type=Path, default=Path("runs/avx2-columns"))
    p.add_argument("--peers-python", help="a Python with transformers and ctranslate2")
    p.add_argument("--threads", type=int, default=2, help="decoding and demo threads")
    p.add_argument("--repeats", type=int, default=3, help="decoding: the median of this many")
    p.add_argument("--sentences", type=int, default=64, help="decoding: the batch")
    p.add_argument("--steps", type=int, default=40, help="decoding: target tokens per sentence")
    p.add_argument("--train-minutes", type=float, default=1.0, help="training: per system")
    p.add_argument("--log-every", type=int, default=10, help="training: updates per speed window")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    p.add_argument("--demo-updates", type=int, default=100, help="demo: 0 runs it to its target")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings that check the script runs (its figures mean nothing)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.sentences, args.steps = 1, 8, 5
        args.train_minutes, args.log_every, args.demo_updates = 0.3, 2, 10
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"decoding": decoding, "training": training, "demo": demo}
    results: dict[str, dict[str, dict[str, float]]] = {}
    headers = {}
    for setting in args.settings:
        headers[setting] = subprocess.run(
            [sys.executable, "-c", "from nmtkit.cpu import machine_header; print(machine_header())"],
            env=environment(setting), capture_output=True, text=True, check=True).stdout.strip()
        print(f"{setting}: {headers[setting]}", flush=True)
    started = time.perf_counter()
    for part in args.parts:
        for setting in args.settings:
            start = time.perf_counter()
            results.setdefault(part, {})[setting] = parts[part](args, setting)
            print(f"{part}, {setting}: {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr,
                  flush=True)
    (args.out / "results.json").write_text(json.dumps({"headers": headers, **results}, indent=1) + "\n")
    both = len(args.settings) == 2
    print(f"\n{args.threads} threads; each part's output in {args.out}; "
          f"{(time.perf_counter() - started) / 60:.1f} min in all\n")
    print("| part | figure | " + " | ".join(args.settings) + (" | avx2 / native |" if both else " |"))
    print("|---|---|" + "---:|" * (len(args.settings) + both))
    for part, figure, values, fmt, compare in rows(results, args):
        cells = [fmt.format(values[s]) if known(values.get(s)) else "" for s in args.settings]
        if both:
            r = ratio(values.get("avx2"), values.get("native"))
            cells.append(f"{r:.2f}" if r is not None and compare else "")
        print(f"| {part} | {figure} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
