"""docs/page.png, the page with a translation and its attention heatmap, for the README.

Offline, from a fresh clone: trains a small Transformer on the generated numbers corpus
(Korean number words -> English, as the tests do; a few minutes on 2 cores), serves it with
`nmtkit serve`, opens the page in Debian's chromium through Playwright (as tests/test_page.py
does), translates a Korean number and saves the screenshot.

    python docs/make_screenshot.py [--checkpoint RUN_OR_CHECKPOINT] [--out docs/page.png]

--checkpoint reuses a model (its run folder is printed on a first run). Needs chromium
(apt-get install chromium) and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE = "삼십사만 오천육백칠십팔"
# small, but trained long enough that its cross-attention lines up with the source's words
MODEL = {"type": "transformer", "d_model": 64, "heads": 4, "ff_size": 128, "encoder_layers": 2,
         "decoder_layers": 2, "dropout": 0.1}
LIMIT = 300_000  # bytes: the README's front page should load fast


def train(folder: Path) -> Path:
    import torch

    from tests.conftest import train_on_numbers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    run, _, _ = train_on_numbers(folder, MODEL, seed=3, n_train=3000, vocab_size=200,
                                 max_steps=1200, lr=0.002, warmup_steps=100)
    return run.parent


def shoot(checkpoint: Path, out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from tests.test_server import start_server

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    proc, url = start_server(checkpoint)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(url)
            page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
            page.fill("#source", SOURCE)
            page.press("#source", "Enter")
            page.wait_for_selector(".heatmap td.cell")
            page.evaluate("document.fonts.ready")  # Hangul comes from the server's font
            page.evaluate("document.activeElement.blur()")  # no focus ring on the text box
            page.hover(".heatmap tbody tr:nth-child(3) td.cell >> nth=1")  # light up a row
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)  # a palette: small
    image.save(out, optimize=True)
    size = out.stat().st_size
    print(f"{out}: {image.width}x{image.height}, {size // 1024} KB")
    if size > LIMIT:
        raise SystemExit(f"{out} is {size} bytes, more than {LIMIT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained numbers model (else one is trained)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "page.png")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = train(Path(tempfile.mkdtemp(prefix="nmtkit-screenshot-")))
        print(f"trained: {checkpoint} (--checkpoint reuses it)")
    shoot(checkpoint, args.out)


if __name__ == "__main__":
    main()
