"""The Vision Transformer: the Transformer encoder's layers over image patches."""

import json
import os
from pathlib import Path

import pytest
import torch

from nmtkit import vit
from nmtkit.cli import main


def test_patches_round_trip_row_by_row() -> None:
    images = torch.rand(3, 2, 8, 8)  # (batch, channels, H, W)
    patches = vit.to_patches(images, 2)
    assert patches.shape == (3, 16, 8)
    torch.testing.assert_close(vit.from_patches(patches, 2, 2), images, rtol=0, atol=0)
    # patch 1 is the second from the left on the top row: rows 0-1, columns 2-3
    torch.testing.assert_close(patches[0, 1].reshape(2, 2, 2), images[0, :, 0:2, 2:4])
    torch.testing.assert_close(patches[0, 4].reshape(2, 2, 2), images[0, :, 2:4, 0:2])


@pytest.mark.parametrize("positional", ["none", "learned", "sinusoidal"])
def test_permuting_the_patches_matters_only_with_positions(positional: str) -> None:
    torch.manual_seed(0)
    model = vit.VisionTransformer(vit.ViTConfig(positional=positional, layers=2)).eval()
    images = torch.rand(4, 1, 8, 8)
    order = torch.randperm(16)
    shuffled = vit.from_patches(vit.to_patches(images, 2)[:, order], 2, 1)
    with torch.no_grad():
        before, _ = model(images)
        after, _ = model(shuffled)
    if positional == "none":
        torch.testing.assert_close(before, after, atol=1e-5, rtol=0)
    else:
        assert (before - after).abs().max() > 1e-3


def test_it_learns_digits_above_chance_in_seconds() -> None:
    split = vit.digits()
    small = vit.Split(split.train_images[:500], split.train_labels[:500], split.test_images, split.test_labels)
    model = vit.train_vit(vit.ViTConfig(d_model=32, ff_size=64, layers=2), small,
                          vit.ViTTraining(epochs=15, batch_size=32, lr=3e-3, augment=False))
    assert vit.accuracy(model, small.test_images, small.test_labels) > 0.7  # chance is 0.1 (here about 0.89 in 2 s)
    attention = model.cls_attention(small.test_images[:3])
    assert attention.shape == (3, 4, 4) and (attention >= 0).all()
    assert (attention.sum((1, 2)) <= 1 + 1e-5).all()  # a share of [CLS]'s attention


def test_the_demo_reports_accuracy_and_draws_the_attention(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--model", "vit", "--set", "training.epochs=2", "--set", "model.layers=1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: ViT" in out and "logistic regression" in out
    run = tmp_path / "runs" / "demo-vit"
    assert (run / "cls-attention.png").stat().st_size > 5000
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["layers"] == 1 and 0 <= saved["test_accuracy"] <= 1
    assert main(["demo", "--model", "vit", "--set", "model.layer=2"]) == 2
    assert "model.layer: unknown key (did you mean layers?)" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")  # a folder the demo did not make is left alone
    assert main(["demo", "--model", "vit", "--set", "training.epochs=1"]) == 2
    assert "holds more than an earlier ViT demo" in capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "mine" and os.path.exists(run / "model.safetensors")
