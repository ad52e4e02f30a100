"""The Vision Transformer (Dosovitskiy et al. 2021; the seed notes): only the Transformer's
encoder, reading an image as a sequence.

    image (1, 8, 8) --cut--> 16 patches of 2x2 pixels --flatten--> (16, 4) --linear--> (16, d_model)
    [CLS] + patches + positions --> encoder layers --> the [CLS] output --> class scores

Attention ignores order, so without positional encodings the model sees the patches as a bag:
permuting them leaves its output unchanged. The [CLS] vector is learned; it gathers from every
patch what the classification head needs, and its attention shows which patches it looked at.

The layers are the Transformer encoder's (`transformer_layers.EncoderLayer`), the positions
those of `embeddings.PositionalEncoding`: the same blocks, a third arrangement. `train_vit` and
`digits` make the demo: scikit-learn's 8x8 handwritten digits (no download).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from nmtkit.config import Section, TransformerBlocks
from nmtkit.embeddings import PositionalEncoding
from nmtkit.errors import NMTKitError
from nmtkit.transformer_layers import EncoderLayer, init_weights


class ViTConfig(TransformerBlocks):
    """A Vision Transformer for small images; the defaults fit the 8x8 digits."""

    image_size: int = Field(8, ge=1, le=4096, description="images are image_size x image_size pixels")
    patch_size: int = Field(2, ge=1, le=4096, description="each patch is patch_size x patch_size pixels")
    channels: int = Field(1, ge=1, le=16, description="colour channels (1: grey)")
    classes: int = Field(10, ge=2, le=100000, description="what the head chooses among")
    layers: int = Field(4, ge=1, le=256, description="encoder layers")
    d_model: int = 64
    ff_size: int = 128
    positional: Literal["sinusoidal", "learned", "none"] = "learned"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on embeddings and every sublayer's output "
                           "(shifted images regularise enough)")

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> ViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide image_size ({self.image_size})")
        return self

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def to_patches(images: Tensor, patch_size: int) -> Tensor:
    """(batch, channels, H, W) -> (batch, H/p * W/p, channels * p * p): row by row, left to right."""
    b, c, h, w = images.shape
    p = patch_size
    grid = images.unfold(2, p, p).unfold(3, p, p)  # (batch, c, H/p, W/p, p, p)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)


def from_patches(patches: Tensor, patch_size: int, channels: int) -> Tensor:
    """The inverse of `to_patches`, for square images."""
    b, n, _ = patches.shape
    p, side = patch_size, math.isqrt(n)
    grid = patches.reshape(b, side, side, channels, p, p)  # (batch, H/p, W/p, c, p, p)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, side * p, side * p)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Linear(cfg.channels * cfg.patch_size**2, cfg.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.positions = PositionalEncoding(cfg.positional, cfg.d_model, cfg.patches + 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        # pre-norm layers leave their sum unnormalised: one norm before the head
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.classes)
        init_weights(self, cfg.d_model)
        nn.init.normal_(self.cls, std=0.02)
        if cfg.positional == "learned":  # the scale of the patch embeddings, as in ViT
            nn.init.normal_(self.positions.table, std=0.02)

    def forward(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """images (batch, channels, H, W) -> class logits (batch, classes), and with need_weights
        each layer's attention weights (batch, heads, 1 + patches, 1 + patches); row 0 is [CLS]'s."""
        x = self.patch_embedding(to_patches(images, self.cfg.patch_size))  # (batch, patches, d_model)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1)  # (batch, 1 + patches, d_model)
        x = self.dropout(self.positions(x))
        weights = []
        for layer in self.layers:
            x, w = layer(x, None, need_weights)  # every position sees every other: no mask
            if need_weights:
                weights.append(w)
        return self.head(self.final_norm(x[:, 0])), weights

    def cls_attention(self, images: Tensor, layer: int | None = None) -> Tensor:
        """How much the [CLS] output draws on each patch, heads averaged: (batch, H/p, W/p).
        One layer's weights, or (layer None) the attention rollout (Abnar and Zuidema 2020):
        the layers' weights multiplied through, each with the residual path added as
        0.5 A + 0.5 I, since a layer's output is its input plus what it attended to."""
        with torch.no_grad():
            _, weights = self(images, need_weights=True)
        heads_mean = [w.mean(1) for w in weights]  # each (batch, 1 + patches, 1 + patches)
        if layer is not None:
            flow = heads_mean[layer]
        else:
            eye = torch.eye(heads_mean[0].size(-1))
            flow = eye.expand_as(heads_mean[0])
            for a in heads_mean:
                flow = (0.5 * a + 0.5 * eye) @ flow
        cls_row = flow[:, 0, 1:]  # (batch, patches): [CLS]'s row, without itself
        side = math.isqrt(cls_row.size(1))
        return cls_row.reshape(-1, side, side)


@dataclass
class Split:
    train_images: Tensor  # (n, 1, 8, 8), pixels in [0, 1]
    train_labels: Tensor  # (n,)
    test_images: Tensor
    test_labels: Tensor


def digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped in its package), a seeded split
    stratified by class."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise NMTKitError("the Vision Transformer demo reads scikit-learn's digits: "
                          "pip install 'nmtkit[vision]'") from e
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(data.target)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=labels.numpy())
    return Split(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


def shift(images: Tensor, generator: torch.Generator, pixels: int = 1) -> Tensor:
    """Each image moved by up to `pixels` in each direction (filled with background): the
    augmentation that keeps 1,400 images from being learnt by heart."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4)
    dy, dx = (torch.randint(0, 2 * pixels + 1, (2, b), generator=generator))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (batch, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (batch, 1, 1, W)
    return padded[torch.arange(b)[:, None, None, None], torch.arange(images.size(1))[None, :, None, None],
                  rows, cols]


def accuracy(model: VisionTransformer, images: Tensor, labels: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits, _ = model(images)
    return (logits.argmax(-1) == labels).float().mean().item()


class ViTTraining(Section):
    """AdamW with a linear warm-up (the first 5% of updates) and cosine decay to zero."""

    epochs: int = Field(100, ge=1, le=100000, description="passes over the training images")
    batch_size: int = Field(64, ge=1, le=100000, description="images per update")
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="the peak learning rate")
    weight_decay: float = Field(0.05, ge=0.0, le=1.0, description="AdamW's, on weight matrices only")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="of the cross-entropy")
    augment: bool = Field(True, description="shift each training image by up to a pixel each way")
    seed: int = Field(0, ge=0, description="initialisation, order and shifts")


class ViTDemoConfig(Section):
    model: ViTConfig = Field(default_factory=ViTConfig)
    training: ViTTraining = Field(default_factory=ViTTraining)


def train_vit(cfg: ViTConfig, split: Split, training: ViTTraining | None = None,
              report: Callable[[int, float, float], None] | None = None) -> VisionTransformer:
    """`report` gets (epoch, mean loss, seconds so far) after each epoch."""
    t = training or ViTTraining()
    epochs, batch_size, lr = t.epochs, t.batch_size, t.lr
    torch.manual_seed(t.seed)
    generator = torch.Generator().manual_seed(t.seed)
    model = VisionTransformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "positions" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "positions" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n = len(split.train_labels)
    steps = epochs * math.ceil(n / batch_size)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))))
    start = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            images = split.train_images[idx]
            if t.augment:
                images = shift(images, generator)
            logits, _ = model(images)
            loss = F.cross_entropy(logits, split.train_labels[idx], label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        if report is not None:
            report(epoch, total / n, time.monotonic() - start)
    return model.eval()


def logistic_regression_accuracy(split: Split) -> float:
    """The baseline: multinomial logistic regression on the 64 raw pixels, same split."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000)
    clf.fit(split.train_images.flatten(1).numpy(), split.train_labels.numpy())
    return float(clf.score(split.test_images.flatten(1).numpy(), split.test_labels.numpy()))
