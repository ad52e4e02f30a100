"""Pictures: attention heatmaps and training curves (matplotlib, no display needed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

_FONTS_READY = False


def hangul_font_file() -> Path | None:
    """NanumGothic.ttf from koreanize-matplotlib, found without importing the package (its
    import changes matplotlib's global settings)."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    font = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "NanumGothic.ttf"
    return font if font.is_file() else None


def _fonts() -> list[str]:
    """DejaVu Sans for Latin, falling back per glyph to NanumGothic for Hangul."""
    global _FONTS_READY
    families = ["DejaVu Sans"]
    font = hangul_font_file()
    if font is not None:
        if not _FONTS_READY:
            font_manager.fontManager.addfont(str(font))
            _FONTS_READY = True
        families.append("NanumGothic")
    return families


# what a picture nmtkit writes starts with, by file suffix: an existing file is replaced only if
# it is such a picture
SIGNATURES = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def check_picture_path(out: Path) -> Path:
    """`out` must name a picture type we write, and may replace only a picture of that type."""
    from nmtkit.errors import NMTKitError
    from nmtkit.files import check_output_file

    suffix = Path(out).suffix.lower()
    if suffix not in SIGNATURES:
        raise NMTKitError(f"--out {out}: give a file name ending in .png, .pdf or .svg")
    return check_output_file(Path(out), magic=SIGNATURES[suffix], makes_folder=True)


def _save(fig: Any, out: Path) -> Path:
    """Write to a temp file beside `out`, then rename: never a half-written picture."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-0{out.suffix}")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def plot_attention(
    attention: list[list[float]],
    source_tokens: list[str],
    target_tokens: list[str],
    out: Path,
    title: str = "",
) -> Path:
    """Heatmap: target tokens down the side, source tokens along the top."""
    with plt.rc_context({"font.family": _fonts()}):
        rows, cols = len(target_tokens), len(source_tokens)
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * cols + 2), max(3, 0.45 * rows + 1.5)))
        data = [row[:cols] for row in attention[:rows]]
        im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(cols), labels=source_tokens, rotation=60, ha="right")
        ax.set_yticks(range(rows), labels=target_tokens)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        if title:
            ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.04)
        return _save(fig, out)


def plot_attention_grid(
    layers: list[list[list[list[float]]]],
    source_tokens: list[str],
    target_tokens: list[str],
    out: Path,
    title: str = "",
) -> Path:
    """Every decoder layer (rows) and head (columns) as a small heatmap; the last column is the
    mean of the heads, which is what the single heatmap shows by default."""
    with plt.rc_context({"font.family": _fonts()}):
        n_layers, n_heads = len(layers), len(layers[0])
        rows, cols = len(target_tokens), len(source_tokens)
        cell = max(1.6, 0.22 * max(rows, cols))
        fig, axes = plt.subplots(n_layers, n_heads + 1, squeeze=False,
                                 figsize=(cell * (n_heads + 1) + 1, cell * n_layers + 1))
        for i, heads in enumerate(layers):
            mean = [[sum(h[r][c] for h in heads) / n_heads for c in range(cols)] for r in range(rows)]
            for j, data in enumerate([*heads, mean]):
                ax = axes[i][j]
                ax.imshow([row[:cols] for row in data[:rows]], cmap="viridis", vmin=0.0, vmax=1.0,
                          aspect="auto")
                ax.set_xticks(range(cols), labels=source_tokens if i == n_layers - 1 else [""] * cols,
                              rotation=90, fontsize=6)
                ax.set_yticks(range(rows), labels=target_tokens if j == 0 else [""] * rows, fontsize=6)
                if i == 0:
                    ax.set_title("mean" if j == n_heads else f"head {j}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"layer {i}", fontsize=8)
        if title:
            fig.suptitle(title)
        return _save(fig, out)


def plot_curves(rows: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Training and validation loss against updates, and validation BLEU when present."""
    train = [r for r in rows if r.get("type") == "train" and r.get("loss") is not None]
    valid = [r for r in rows if r.get("type") == "valid"]
    bleu = [r for r in valid if r.get("bleu") is not None]
    ncols = 2 if bleu else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.8)
    ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss")
    ax.set_xlabel("update")
    ax.set_ylabel("loss per token")
    ax.legend()
    ax.grid(alpha=0.3)
    if bleu:
        ax = axes[0][1]
        ax.plot([r["step"] for r in bleu], [r["bleu"] for r in bleu], "o-", color="C2")
        ax.set_xlabel("update")
        ax.set_ylabel("valid BLEU")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    # the two losses are not the same quantity: say so where the eye compares them
    fig.text(0.01, -0.02, "train loss: label-smoothed cross-entropy with dropout on; valid loss: "
             "plain cross-entropy, dropout off.\nSo the valid loss can sit below the train loss "
             "without anything being wrong.", fontsize=8, ha="left", va="top", color="0.3")
    return _save(fig, out)


def plot_patch_attention(images: Any, maps: dict[str, Any], titles: list[str], out: Path) -> Path:
    """The Vision Transformer's [CLS] attention: each image (top row) above, per entry of
    `maps`, the weight [CLS] gives each of its patches (one cell per patch). images (n, H, W);
    each map (n, H/p, W/p); array-likes."""
    n = len(images)
    fig, axes = plt.subplots(1 + len(maps), n, squeeze=False, figsize=(1.6 * n + 0.8, 1.8 * (1 + len(maps))))
    for i in range(n):
        axes[0][i].imshow(images[i], cmap="gray_r")
        axes[0][i].set_title(titles[i], fontsize=8)
    axes[0][0].set_ylabel("image", fontsize=8)
    for row, (label, attention) in enumerate(maps.items(), start=1):
        for i in range(n):
            im = axes[row][i].imshow(attention[i], cmap="viridis", vmin=0.0)
        axes[row][0].set_ylabel(label, fontsize=8)
        fig.colorbar(im, ax=axes[row].tolist(), fraction=0.04)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out)
