"""Load test of `nmtkit serve` on 127.0.0.1: cross-request batching on and off.

C concurrent clients each send R single-sentence requests, one after the other (every loop is
bounded in count and in time, and stops by itself); the server runs in its own process with
--threads. Traffic "translate" is /translate alone; "mixed" rotates /translate, /alternatives
(k 5) and /score over the requests, as the page's users do. For each (traffic, clients,
batching): requests/s, latency p50 / p95 / p99 and errors.

    python benchmarks/bench_serve.py --checkpoint runs/multi30k-transformer \
        --sentences ../shared/data/multi30k/test2016.en

Without --checkpoint it serves a random model of the Multi30k Transformer's shape
(configs/multi30k-transformer.yaml) with a vocabulary learnt on the demo corpus, and sends the
demo corpus's sentences (nothing from ../shared is needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # nmtkit from this checkout


def random_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A checkpoint with random weights of the Multi30k Transformer's shape, and source text."""
    from nmtkit.checkpoint import save_checkpoint
    from nmtkit.config import load_config
    from nmtkit.data import prepare
    from nmtkit.democorpus import make_demo_corpus
    from nmtkit.model import build_model

    files = make_demo_corpus(folder / "corpus")
    cfg = load_config(REPO / "configs/multi30k-transformer.yaml", [
        f"data.train_src={files['train'][1]}", f"data.train_tgt={files['train'][0]}",
        f"data.valid_src={files['valid'][1]}", f"data.valid_tgt={files['valid'][0]}",
        f"data.test_src={files['test'][1]}", f"data.test_tgt={files['test'][0]}",
        f"data.out_dir={folder / 'bin'}", "vocab.joint=true", "vocab.size=1000"])
    data = prepare(cfg.data, cfg.vocab, log=lambda _: None)
    model = build_model(cfg.model, len(data.src_tokenizer), len(data.tgt_tokenizer))
    path = save_checkpoint(folder / "ckpt", model, cfg, data.src_tokenizer, data.tgt_tokenizer, {"step": 0})
    return path, files["test"][1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: Path, batching: bool, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "nmtkit.cli", "serve", "--checkpoint", str(checkpoint), "--port",
           str(port), "--threads", str(threads), "--queue-limit", "1024"]
    if not batching:
        cmd.append("--no-batching")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-1000:]}")


def request(traffic: str, n: int, sentence: str) -> tuple[str, dict]:
    """The n-th request of a load: always /translate, or the three endpoints in turn."""
    kind = "translate" if traffic == "translate" else ("translate", "alternatives", "score")[n % 3]
    if kind == "translate":
        return "/translate", {"text": [sentence]}
    if kind == "alternatives":
        return "/alternatives", {"source": sentence, "k": 5}
    return "/score", {"source": [sentence], "target": [sentence]}


async def load(url: str, sentences: list[str], clients: int, requests: int, limit_s: float,
               traffic: str = "translate") -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + limit_s

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for r in range(requests):  # bounded in count...
            if time.monotonic() > deadline:  # ...and in time
                errors += requests - r
                return
            sentence = sentences[(c * requests + r) % len(sentences)]
            start = time.perf_counter()
            try:
                path, body = request(traffic, c * requests + r, sentence)
                response = await http.post(f"{url}{path}", json=body, timeout=60)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits) as http:
        await http.post(f"{url}/translate", json={"text": sentences[:1]}, timeout=60)  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"requests_s": len(latencies) / wall, "p50": q[49], "p95": q[94], "p99": q[98],
            "errors": errors, "n": len(latencies), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--sentences", default=None, help="source sentences, one per line")
    p.add_argument("--clients", default="8,32,64")
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--limit-s", type=float, default=600, help="each load's longest run")
    p.add_argument("--traffic", default="translate,mixed", help="translate and/or mixed (see above)")
    args = p.parse_args()
    from nmtkit.cpu import machine_header

    print(machine_header())

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            from nmtkit.checkpoint import resolve_checkpoint

            checkpoint, text = resolve_checkpoint(args.checkpoint), Path(args.sentences)
        else:
            checkpoint, text = random_checkpoint(Path(tmp))
        sentences = [s for s in Path(text).read_text(encoding="utf-8").splitlines() if s.strip()]
        rows = []
        for traffic in args.traffic.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                for batching in (True, False):
                    proc, url = start(checkpoint, batching, args.threads)
                    try:
                        result = asyncio.run(load(url, sentences, clients, args.requests, args.limit_s,
                                                  traffic))
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(60)
                    rows.append((traffic, clients, batching, result))
                    print(f"  {traffic}, {clients} clients, batching {'on' if batching else 'off'}: "
                          f"{result['requests_s']:.1f} requests/s", file=sys.stderr)
    print(f"{checkpoint}; server threads {args.threads}; {args.requests} single-sentence requests "
          "per client")
    print()
    print("| traffic | clients | batching | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | errors "
          "| batching gain |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    by = {(t, c, b): r for t, c, b, r in rows}
    for traffic, clients, batching, r in rows:
        gain = f"{r['requests_s'] / by[(traffic, clients, False)]['requests_s']:.2f}x" if batching else ""
        print(f"| {traffic} | {clients} | {'on' if batching else 'off'} | {r['requests_s']:.1f} | "
              f"{1000 * r['p50']:.0f} | {1000 * r['p95']:.0f} | {1000 * r['p99']:.0f} | {r['errors']} | "
              f"{gain} |")


if __name__ == "__main__":
    main()
